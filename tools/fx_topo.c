/*
 * fx-topo: accelerators x NICs with their PCI path classes, like `nvidia-smi topo -m`, each
 * device's NUMA node and CPUs, and the NIC libfabricx picks for each accelerator.
 *
 *   fx-topo [--input FILE.xml] [--json]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx_topo.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: fx-topo [--input FILE.xml] [--json]\n"
               "  --input FILE  read a recorded hwloc XML topology instead of this host\n"
               "                (FX_TOPO_FILE does the same)\n"
               "  --json        print one JSON object\n");
}

/* Prints s as a JSON string. */
static void json_str(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\') {
            printf("\\%c", c);
        } else if (c < 0x20) {
            printf("\\u%04x", c);
        } else {
            putchar(c);
        }
    }
    putchar('"');
}

static void json_dev_common(const struct fx_topo_dev *d)
{
    printf("\"pci\": ");
    json_str(d->pci);
    printf(", \"name\": ");
    json_str(d->name);
    printf(", \"model\": ");
    json_str(d->model);
    printf(", \"vendor\": \"%04x\", \"device\": \"%04x\", \"class\": \"%04x\", \"numa\": %d, "
           "\"cpus\": ",
           d->vendor, d->device, d->pci_class, d->numa);
    json_str(d->cpus);
    printf(", \"link_gbps\": %.2f", (double)d->link_gbps);
}

static void print_json(const struct fx_topo *t)
{
    int ng     = fx_topo_num_gpus(t);
    int nn     = fx_topo_num_nics(t);
    bool first = true;

    printf("{\"source\": \"%s\", \"numa_nodes\": %d,\n \"gpus\": [",
           fx_topo_is_live(t) ? "live" : "xml", fx_topo_num_numa(t));
    for (int g = 0; g < ng; g++) {
        printf("%s\n  {", g ? "," : "");
        json_dev_common(fx_topo_gpu(t, g));
        printf("}");
    }
    printf("],\n \"nics\": [");
    for (int n = 0; n < nn; n++) {
        const struct fx_topo_dev *d = fx_topo_nic(t, n);

        printf("%s\n  {", n ? "," : "");
        json_dev_common(d);
        printf(", \"kind\": \"%s\", \"rdma\": ", d->kind == FX_NIC_IB ? "ib" : "ethernet");
        json_str(d->rdma);
        printf(", \"netdevs\": [");
        for (int k = 0; k < d->nnetdevs; k++) {
            printf("%s", k ? ", " : "");
            json_str(d->netdevs[k]);
        }
        printf("]}");
    }
    printf("],\n \"paths\": [");
    for (int g = 0; g < ng; g++) {
        for (int n = 0; n < nn; n++) {
            printf("%s\n  {\"gpu\": \"%s\", \"nic\": \"%s\", \"class\": \"%s\"}", first ? "" : ",",
                   fx_topo_gpu(t, g)->pci, fx_topo_nic(t, n)->pci,
                   fx_topo_path_name(fx_topo_gpu_nic_path(t, g, n)));
            first = false;
        }
    }
    printf("],\n \"nearest_nic\": {");
    first = true;
    for (int g = 0; g < ng; g++) {
        int n = fx_topo_nearest_nic_to_gpu(t, g);

        if (n >= 0) {
            printf("%s\"%s\": \"%s\"", first ? "" : ", ", fx_topo_gpu(t, g)->pci,
                   fx_topo_nic(t, n)->pci);
            first = false;
        }
    }
    printf("},\n \"nearest_nic_to_process\": ");
    if (nn > 0) {
        printf("\"%s\"", fx_topo_nic(t, fx_topo_nearest_nic_to_cpus(t, NULL))->pci);
    } else {
        printf("null");
    }
    printf("}\n");
}

static void print_table(const struct fx_topo *t)
{
    int ng = fx_topo_num_gpus(t);
    int nn = fx_topo_num_nics(t);

    printf("%-10s", "");
    for (int n = 0; n < nn; n++) {
        printf(" %-8.8s", fx_topo_nic(t, n)->name);
    }
    printf("  %-5s %s\n", "NUMA", "CPUs");
    for (int g = 0; g < ng; g++) {
        const struct fx_topo_dev *d = fx_topo_gpu(t, g);

        printf("%-10.10s", d->name);
        for (int n = 0; n < nn; n++) {
            printf(" %-8s", fx_topo_path_name(fx_topo_gpu_nic_path(t, g, n)));
        }
        printf("  %-5d %s\n", d->numa, d->cpus);
    }
    printf("\nAccelerators:\n");
    if (ng == 0) {
        printf("  none\n");
    }
    for (int g = 0; g < ng; g++) {
        const struct fx_topo_dev *d = fx_topo_gpu(t, g);
        int n                       = fx_topo_nearest_nic_to_gpu(t, g);

        printf("  %-10s %s  %04x:%04x %s  NUMA %d  nearest NIC: %s", d->name, d->pci, d->vendor,
               d->device, d->model, d->numa, n >= 0 ? fx_topo_nic(t, n)->name : "none");
        if (n >= 0) {
            printf(" (%s, %s)", fx_topo_nic(t, n)->pci,
                   fx_topo_path_name(fx_topo_gpu_nic_path(t, g, n)));
        }
        printf("\n");
    }
    printf("\nNICs:\n");
    if (nn == 0) {
        printf("  none\n");
    }
    for (int n = 0; n < nn; n++) {
        const struct fx_topo_dev *d = fx_topo_nic(t, n);

        printf("  %-10s %s  %-8s netdevs:", d->name, d->pci,
               d->kind == FX_NIC_IB ? "ib" : "ethernet");
        for (int k = 0; k < d->nnetdevs; k++) {
            printf(" %s", d->netdevs[k]);
        }
        printf("%s  NUMA %d  CPUs %s", d->nnetdevs ? "" : " -", d->numa, d->cpus);
        if (d->link_gbps > 0) {
            printf("  link %.2f GB/s", (double)d->link_gbps);
        }
        printf("\n");
    }
    if (nn > 0) {
        printf("\nNearest NIC to this process's CPUs%s: %s\n",
               fx_topo_is_live(t) ? "" : " (all CPUs: the topology is not this host's)",
               fx_topo_nic(t, fx_topo_nearest_nic_to_cpus(t, NULL))->name);
    }
    printf("\nLegend: PIX at most one PCIe bridge; PXB several bridges; PHB a host bridge;\n"
           "        NODE same NUMA node, different host bridges; SYS across NUMA nodes\n");
}

int main(int argc, char **argv)
{
    const char *input = NULL;
    bool json         = false;
    struct fx_topo *t;
    char err[512];
    fx_status status;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) {
            input = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "fx-topo: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    status = fx_topo_load(&t, input, err, sizeof(err));
    if (status != FX_OK) {
        fprintf(stderr, "fx-topo: %s\n", err);
        return 1;
    }
    if (json) {
        print_json(t);
    } else {
        print_table(t);
    }
    fx_topo_free(t);
    return 0;
}
