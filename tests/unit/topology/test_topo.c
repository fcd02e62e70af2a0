/*
 * Topology model over recorded hwloc XML files (tests/data/topologies, see its README). Every
 * expected value was read from the file with hwloc's own tools, independently of this code:
 *   lstopo-no-graphics --input FILE                      the tree: which bridge, which NUMA node
 *   lstopo-no-graphics --input FILE --only pcidev -v     bus ids, vendor:device, PCI class
 *   lstopo-no-graphics --input FILE --only osdev -v      OpenFabrics / CUDA / NVML devices
 * A GPU and a NIC behind the same PCIe switch (one downstream bridge each) are PIX; below
 * different bridges of one host bridge PHB; on one NUMA node under different host bridges NODE;
 * on different NUMA nodes SYS.
 */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx_topo.h"

/* hwloc 2.9 leaks the objects of a half-parsed XML file on its error path, whatever the caller
 * frees afterwards (hwloc_alloc_setup_object and hwloc_bitmap_alloc allocations that
 * hwloc_topology_destroy never sees). LeakSanitizer is paused around loads that must fail on a
 * corrupt file only, so it keeps checking every other load, the failing ones of missing files
 * included. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define HWLOC_XML_LEAKS_BEGIN() __lsan_disable()
#define HWLOC_XML_LEAKS_END()   __lsan_enable()
#else
#define HWLOC_XML_LEAKS_BEGIN() ((void)0)
#define HWLOC_XML_LEAKS_END()   ((void)0)
#endif

static struct fx_topo *load(const char *file)
{
    const char *src = getenv("LIBFABRICX_TEST_SOURCE_DIR");
    char path[1024];
    char err[512] = "";
    struct fx_topo *t;
    fx_status s;

    cr_assert_not_null(src, "LIBFABRICX_TEST_SOURCE_DIR not set (run through meson test)");
    snprintf(path, sizeof(path), "%s/tests/data/topologies/%s", src, file);
    s = fx_topo_load(&t, path, err, sizeof(err));
    cr_assert_eq(s, FX_OK, "%s: %s", file, err);
    cr_assert_not(fx_topo_is_live(t), "an XML topology must never count as this host");
    return t;
}

static fx_status load_fail(const char *file, char *err, size_t errlen)
{
    const char *src = getenv("LIBFABRICX_TEST_SOURCE_DIR");
    char path[1024];
    struct fx_topo *t = NULL;
    fx_status s;

    cr_assert_not_null(src);
    snprintf(path, sizeof(path), "%s/tests/data/topologies/%s", src, file);
    if (access(path, F_OK) == 0) { /* a corrupt file, not a missing one */
        HWLOC_XML_LEAKS_BEGIN();
        s = fx_topo_load(&t, path, err, errlen);
        HWLOC_XML_LEAKS_END();
    } else {
        s = fx_topo_load(&t, path, err, errlen);
    }
    cr_expect_null(t);
    return s;
}

static int gpu_by_pci(const struct fx_topo *t, const char *pci)
{
    for (int i = 0; i < fx_topo_num_gpus(t); i++) {
        if (strcmp(fx_topo_gpu(t, i)->pci, pci) == 0) {
            return i;
        }
    }
    cr_assert_fail("no GPU at %s", pci);
    return -1;
}

static int nic_by_pci(const struct fx_topo *t, const char *pci)
{
    for (int i = 0; i < fx_topo_num_nics(t); i++) {
        if (strcmp(fx_topo_nic(t, i)->pci, pci) == 0) {
            return i;
        }
    }
    cr_assert_fail("no NIC at %s", pci);
    return -1;
}

static void expect_path(const struct fx_topo *t, const char *gpu, const char *nic,
                        enum fx_topo_path want)
{
    enum fx_topo_path got = fx_topo_gpu_nic_path(t, gpu_by_pci(t, gpu), nic_by_pci(t, nic));

    cr_expect_eq(got, want, "GPU %s - NIC %s: %s, want %s", gpu, nic, fx_topo_path_name(got),
                 fx_topo_path_name(want));
}

static void expect_nearest(const struct fx_topo *t, const char *gpu, const char *nic)
{
    int n = fx_topo_nearest_nic_to_gpu(t, gpu_by_pci(t, gpu));

    cr_assert_geq(n, 0, "GPU %s has no nearest NIC", gpu);
    cr_expect_str_eq(fx_topo_nic(t, n)->pci, nic, "nearest NIC to GPU %s", gpu);
}

static void expect_nic(const struct fx_topo *t, const char *pci, const char *name,
                       enum fx_topo_nic_kind kind, int numa)
{
    const struct fx_topo_dev *d = fx_topo_nic(t, nic_by_pci(t, pci));

    cr_expect_str_eq(d->name, name, "NIC %s name", pci);
    cr_expect_eq(d->kind, kind, "NIC %s kind", pci);
    cr_expect_eq(d->numa, numa, "NIC %s NUMA node %d, want %d", pci, d->numa, numa);
}

static void expect_gpu_numa(const struct fx_topo *t, const char *pci, int numa)
{
    cr_expect_eq(fx_topo_gpu(t, gpu_by_pci(t, pci))->numa, numa, "GPU %s NUMA node", pci);
}

/* JURECA-DC GPU node: 8 NUMA nodes (NPS4); each A100 shares a PCIe switch with one HDR HCA, one
 * pair per NUMA node (tree: Group0 L#1 / NUMANode P#1 / HostBridge / PCIBridge / PCIBridge with
 * 43:00.0 mlx5_1 and 44:00.0 under two downstream bridges); two i350 ports on NUMA node 4; the
 * ASPEED VGA (1a03:2000) is a BMC, not a GPU. */
Test(topo, jureca_dc_gpu_node, .timeout = 30)
{
    struct fx_topo *t   = load("topo.jrc0323.xml");
    const char *gpus[4] = {"0000:03:00.0", "0000:44:00.0", "0000:84:00.0", "0000:c4:00.0"};
    const char *hcas[4] = {"0000:04:00.0", "0000:43:00.0", "0000:83:00.0", "0000:c3:00.0"};
    const int numa[4]   = {3, 1, 7, 5};

    cr_expect_eq(fx_topo_num_numa(t), 8);
    cr_assert_eq(fx_topo_num_gpus(t), 4);
    cr_assert_eq(fx_topo_num_nics(t), 6);
    expect_nic(t, "0000:04:00.0", "mlx5_0", FX_NIC_IB, 3);
    expect_nic(t, "0000:43:00.0", "mlx5_1", FX_NIC_IB, 1);
    expect_nic(t, "0000:83:00.0", "mlx5_2", FX_NIC_IB, 7);
    expect_nic(t, "0000:c3:00.0", "mlx5_3", FX_NIC_IB, 5);
    expect_nic(t, "0000:e1:00.0", "enp225s0f0", FX_NIC_ETHERNET, 4);
    expect_nic(t, "0000:e1:00.1", "enp225s0f1", FX_NIC_ETHERNET, 4);
    cr_expect_str_eq(fx_topo_nic(t, nic_by_pci(t, "0000:43:00.0"))->netdevs[0], "ib1");
    for (int g = 0; g < 4; g++) {
        expect_gpu_numa(t, gpus[g], numa[g]);
        for (int n = 0; n < 4; n++) {
            expect_path(t, gpus[g], hcas[n], g == n ? FX_PATH_PIX : FX_PATH_SYS);
        }
        expect_path(t, gpus[g], "0000:e1:00.0", FX_PATH_SYS);
        expect_nearest(t, gpus[g], hcas[g]);
    }
    /* FX_DEVICE's forms: an index in the list's (PCI) order, or a bus id with or without its
     * domain, any case. */
    cr_expect_eq(fx_topo_find_gpu(t, "2"), gpu_by_pci(t, "0000:84:00.0"));
    cr_expect_eq(fx_topo_find_gpu(t, "0000:c4:00.0"), 3);
    cr_expect_eq(fx_topo_find_gpu(t, "0000:C4:00.0"), 3);
    cr_expect_eq(fx_topo_find_gpu(t, "44:00.0"), 1);
    cr_expect_eq(fx_topo_find_gpu(t, "4"), -1, "index past the last accelerator");
    cr_expect_eq(fx_topo_find_gpu(t, "-1"), -1);
    cr_expect_eq(fx_topo_find_gpu(t, ""), -1);
    cr_expect_eq(fx_topo_find_gpu(t, "0000:04:00.0"), -1, "a NIC is no accelerator");
    cr_expect_eq(fx_topo_find_gpu(t, "gpu0"), -1);
    /* NICs as near as the chosen one (the TCP transport spreads over their interfaces): a GPU's
     * own HCA alone (the others are SYS from it); for CPUs of NUMA node 4, the two i350 ports
     * there (same kind and link), the nearest first. */
    {
        int near[8];
        int n = fx_topo_nics_as_near(t, 0, nic_by_pci(t, "0000:04:00.0"), near, 8);
        int e = fx_topo_nearest_nic_to_cpus(t, fx_topo_nic(t, nic_by_pci(t, "0000:e1:00.0"))->cpus);

        cr_expect_eq(n, 1, "GPU 0's HCA has %d NICs as near, want itself only", n);
        cr_expect_eq(near[0], nic_by_pci(t, "0000:04:00.0"));
        cr_assert_eq(e, nic_by_pci(t, "0000:e1:00.0"), "nearest to NUMA node 4's CPUs");
        n = fx_topo_nics_as_near(t, -1, e, near, 8);
        cr_expect_eq(n, 2, "the i350 ports: %d NICs as near, want 2", n);
        cr_expect(n == 2 && near[0] == e && near[1] == nic_by_pci(t, "0000:e1:00.1"));
        cr_expect_eq(fx_topo_nics_as_near(t, -1, e, near, 1), 1, "bounded by max");
        cr_expect_eq(fx_topo_nics_as_near(t, -1, 99, near, 8), 0, "no NIC 99");
    }
    fx_topo_free(t);
}

/* JUWELS Cluster GPU node: 2 sockets = 2 NUMA nodes; V100 pairs share a PLX switch with one EDR
 * HCA (5d, 5e with 5f:00.0 mlx5_0 on NUMA 0; 88, 89 with 8a:00.0 mlx5_1 on NUMA 1); four X722
 * ports at 37:00.x on NUMA 0 under another host bridge; a Matrox VGA (102b:0522) is no GPU. */
Test(topo, juwels_cluster_gpu_node, .timeout = 30)
{
    struct fx_topo *t = load("topo.jwc09n003.xml");

    cr_expect_eq(fx_topo_num_numa(t), 2);
    cr_assert_eq(fx_topo_num_gpus(t), 4);
    cr_assert_eq(fx_topo_num_nics(t), 6);
    expect_nic(t, "0000:5f:00.0", "mlx5_0", FX_NIC_IB, 0);
    expect_nic(t, "0000:8a:00.0", "mlx5_1", FX_NIC_IB, 1);
    cr_expect_eq(fx_topo_nic(t, nic_by_pci(t, "0000:37:00.0"))->kind, FX_NIC_ETHERNET);
    expect_gpu_numa(t, "0000:5d:00.0", 0);
    expect_gpu_numa(t, "0000:89:00.0", 1);
    expect_path(t, "0000:5d:00.0", "0000:5f:00.0", FX_PATH_PIX);
    expect_path(t, "0000:5e:00.0", "0000:5f:00.0", FX_PATH_PIX);
    expect_path(t, "0000:88:00.0", "0000:8a:00.0", FX_PATH_PIX);
    expect_path(t, "0000:89:00.0", "0000:8a:00.0", FX_PATH_PIX);
    expect_path(t, "0000:5d:00.0", "0000:37:00.0", FX_PATH_NODE);
    expect_path(t, "0000:5d:00.0", "0000:8a:00.0", FX_PATH_SYS);
    expect_path(t, "0000:88:00.0", "0000:37:00.0", FX_PATH_SYS);
    expect_path(t, "0000:88:00.0", "0000:5f:00.0", FX_PATH_SYS);
    expect_nearest(t, "0000:5d:00.0", "0000:5f:00.0");
    expect_nearest(t, "0000:5e:00.0", "0000:5f:00.0");
    expect_nearest(t, "0000:88:00.0", "0000:8a:00.0");
    expect_nearest(t, "0000:89:00.0", "0000:8a:00.0");
    fx_topo_free(t);
}

/* MeluXina GPU node: 4 A100 but 2 HCAs: 44:00.0 shares a switch with 43:00.0 mlx5_0 (NUMA 1),
 * 84:00.0 with 83:00.0 mlx5_1 (NUMA 7); 03:00.0 (NUMA 3) and c3:00.0 (NUMA 5) have no NIC under
 * their switch and are SYS to every NIC. GPUs carry DRM card/renderD OS devices only. */
Test(topo, meluxina_gpu_without_a_nic_under_its_switch, .timeout = 30)
{
    struct fx_topo *t = load("topo.mel2001.xml");

    cr_assert_eq(fx_topo_num_gpus(t), 4);
    cr_assert_eq(fx_topo_num_nics(t), 4);
    expect_nic(t, "0000:43:00.0", "mlx5_0", FX_NIC_IB, 1);
    expect_nic(t, "0000:83:00.0", "mlx5_1", FX_NIC_IB, 7);
    expect_gpu_numa(t, "0000:03:00.0", 3);
    expect_gpu_numa(t, "0000:c3:00.0", 5);
    expect_path(t, "0000:44:00.0", "0000:43:00.0", FX_PATH_PIX);
    expect_path(t, "0000:84:00.0", "0000:83:00.0", FX_PATH_PIX);
    expect_path(t, "0000:44:00.0", "0000:83:00.0", FX_PATH_SYS);
    for (int n = 0; n < 4; n++) {
        cr_expect_eq(fx_topo_gpu_nic_path(t, gpu_by_pci(t, "0000:03:00.0"), n), FX_PATH_SYS);
        cr_expect_eq(fx_topo_gpu_nic_path(t, gpu_by_pci(t, "0000:c3:00.0"), n), FX_PATH_SYS);
    }
    expect_nearest(t, "0000:44:00.0", "0000:43:00.0");
    expect_nearest(t, "0000:84:00.0", "0000:83:00.0");
    /* all SYS: RDMA first, equal 31.51 GB/s links, then the lower bus id */
    expect_nearest(t, "0000:03:00.0", "0000:43:00.0");
    expect_nearest(t, "0000:c3:00.0", "0000:43:00.0");
    cr_expect_eq(strncmp(fx_topo_gpu(t, gpu_by_pci(t, "0000:44:00.0"))->name, "card", 4), 0,
                 "GPU named '%s'", fx_topo_gpu(t, gpu_by_pci(t, "0000:44:00.0"))->name);
    fx_topo_free(t);
}

/* DEEP-EST ESB node: one socket, one NUMA node; a V100 PCIe (65:00.0), two X550 ports (17:00.x)
 * and a ConnectX-5 (b3:00.0 mlx5_0), each under its own host bridge: all NODE. */
Test(topo, deep_est_single_numa_node, .timeout = 30)
{
    struct fx_topo *t = load("topo.dp-esb01.xml");

    cr_expect_eq(fx_topo_num_numa(t), 1);
    cr_assert_eq(fx_topo_num_gpus(t), 1);
    cr_assert_eq(fx_topo_num_nics(t), 3);
    expect_nic(t, "0000:b3:00.0", "mlx5_0", FX_NIC_IB, 0);
    expect_path(t, "0000:65:00.0", "0000:b3:00.0", FX_PATH_NODE);
    expect_path(t, "0000:65:00.0", "0000:17:00.0", FX_PATH_NODE);
    expect_nearest(t, "0000:65:00.0", "0000:b3:00.0"); /* NODE ties: the RDMA NIC */
    fx_topo_free(t);
}

/* HP SL390s: three Tesla M2070-class GPUs (10de:06d2); 06:00.0 and the ConnectX (05:00.0,
 * class 0x0c06 "InfiniBand" serial bus: still a NIC, mlx4_0 with netdevs eth2 and ib0) hang
 * under different bridges of socket 0's host bridge: PHB; 11:00.0 and 14:00.0 are on socket 1:
 * SYS. The on-board ATI ES1000 (1002:515e, VGA) is no accelerator. */
Test(topo, proliant_class_0c06_hca_and_phb, .timeout = 30)
{
    struct fx_topo *t = load("24em64t-2n6c2t-pci.xml");
    const struct fx_topo_dev *hca;

    cr_assert_eq(fx_topo_num_gpus(t), 3);
    cr_assert_eq(fx_topo_num_nics(t), 3);
    hca = fx_topo_nic(t, nic_by_pci(t, "0000:05:00.0"));
    cr_expect_str_eq(hca->rdma, "mlx4_0");
    cr_expect_eq(hca->kind, FX_NIC_IB);
    cr_expect_eq(hca->nnetdevs, 2);
    expect_path(t, "0000:06:00.0", "0000:05:00.0", FX_PATH_PHB);
    expect_path(t, "0000:06:00.0", "0000:04:00.0", FX_PATH_PHB);
    expect_path(t, "0000:11:00.0", "0000:05:00.0", FX_PATH_SYS);
    expect_nearest(t, "0000:06:00.0", "0000:05:00.0");
    expect_gpu_numa(t, "0000:14:00.0", 1);
    fx_topo_free(t);
}

/* Supermicro X9DRG-HF (I/O edited by hwloc's tests): three Tesla M2075 (10de:1094, class 0x0302)
 * plus a Radeon (1002:6798, VGA class) that counts only through its OpenCL device opencl0d1;
 * the Matrox VGA does not. NICs: mlx5_0 and two i350 ports. */
Test(topo, accelerators_found_by_os_device, .timeout = 30)
{
    struct fx_topo *t = load("32em64t-2n8c2t-pci-wholeio.xml");
    int radeon;

    cr_expect_eq(fx_topo_num_gpus(t), 4);
    cr_expect_eq(fx_topo_num_nics(t), 3);
    radeon = gpu_by_pci(t, "0000:84:00.1");
    cr_expect_str_eq(fx_topo_gpu(t, radeon)->name, "opencl0d1");
    fx_topo_free(t);
}

/* DGX-2: 16 V100 as NVML devices, no NIC in the file: no nearest NIC. */
Test(topo, dgx2_has_gpus_and_no_nic, .timeout = 30)
{
    struct fx_topo *t = load("nvidiaDGX2.xml");

    cr_expect_eq(fx_topo_num_gpus(t), 16);
    cr_expect_eq(fx_topo_num_nics(t), 0);
    cr_expect_eq(fx_topo_nearest_nic_to_gpu(t, 0), -1);
    cr_expect_eq(fx_topo_nearest_nic_to_cpus(t, NULL), -1);
    cr_expect_eq(strncmp(fx_topo_gpu(t, 0)->name, "nvml", 4), 0, "named %s",
                 fx_topo_gpu(t, 0)->name);
    fx_topo_free(t);
}

/* POWER8 Minsky: 4 P100 (10de:15f9) with cuda/opencl/nvml devices, in PCI domains 2, 3, a, b. */
Test(topo, power8_gpus_in_other_pci_domains, .timeout = 30)
{
    struct fx_topo *t = load("power8gpudistances.xml");

    cr_assert_eq(fx_topo_num_gpus(t), 4);
    cr_expect_str_eq(fx_topo_gpu(t, 0)->pci, "0002:01:00.0");
    cr_expect_str_eq(fx_topo_gpu(t, 3)->pci, "000b:01:00.0");
    cr_expect_eq(strncmp(fx_topo_gpu(t, 0)->name, "cuda", 4), 0, "named %s",
                 fx_topo_gpu(t, 0)->name);
    cr_expect_eq(fx_topo_num_nics(t), 0);
    fx_topo_free(t);
}

/* 4-socket Xeon with 24 NUMA nodes: six Ethernet ports and a ConnectX-3 behind a PEX switch,
 * found through its OpenFabrics device mlx4_0; the Matrox G200eR2 is no GPU. */
Test(topo, many_numa_nodes_no_gpu, .timeout = 30)
{
    struct fx_topo *t = load("192em64t-12gr2n8c2t.xml");
    bool found        = false;

    cr_expect_eq(fx_topo_num_numa(t), 24);
    cr_expect_eq(fx_topo_num_gpus(t), 0);
    cr_expect_eq(fx_topo_num_nics(t), 7);
    for (int n = 0; n < fx_topo_num_nics(t); n++) {
        found |= strcmp(fx_topo_nic(t, n)->rdma, "mlx4_0") == 0;
    }
    cr_expect(found, "mlx4_0 not found");
    fx_topo_free(t);
}

/* Cisco VIC with SR-IOV: 18 network functions (classes 0x0200), usnic_* OpenFabrics devices. */
Test(topo, many_virtual_functions, .timeout = 30)
{
    struct fx_topo *t = load("16intel64-manyVFs.xml");

    cr_expect_eq(fx_topo_num_nics(t), 18);
    cr_expect_eq(fx_topo_num_gpus(t), 0);
    fx_topo_free(t);
}

/* A host with two NUMA nodes and nothing on PCI. */
Test(topo, host_without_nic_or_gpu, .timeout = 30)
{
    struct fx_topo *t = load("no-io-2numa.xml");

    cr_expect_eq(fx_topo_num_numa(t), 2);
    cr_expect_eq(fx_topo_num_nics(t), 0);
    cr_expect_eq(fx_topo_num_gpus(t), 0);
    cr_expect_eq(fx_topo_nearest_nic_to_cpus(t, "0-1"), -1);
    fx_topo_free(t);
}

/* The NIC nearest to some CPUs: the HCA on their NUMA node (jrc0323: CPUs 16-31 are NUMA 1,
 * with mlx5_1; 80-95 NUMA 5 with mlx5_3). */
Test(topo, nearest_nic_to_cpus, .timeout = 30)
{
    struct fx_topo *t = load("topo.jrc0323.xml");

    cr_expect_str_eq(fx_topo_nic(t, fx_topo_nearest_nic_to_cpus(t, "16-31"))->name, "mlx5_1");
    cr_expect_str_eq(fx_topo_nic(t, fx_topo_nearest_nic_to_cpus(t, "80-95"))->name, "mlx5_3");
    cr_expect_eq(fx_topo_nearest_nic_to_cpus(t, "not a cpu list"), -1);
    fx_topo_free(t);
}

Test(topo, missing_file_is_named, .timeout = 10)
{
    char err[512] = "";

    cr_expect_eq(load_fail("does-not-exist.xml", err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "does-not-exist.xml") && strstr(err, "No such file"), "%s", err);
}

Test(topo, corrupt_files_are_refused, .timeout = 10)
{
    char err[512] = "";

    cr_expect_eq(load_fail("garbage.xml", err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "garbage.xml") != NULL, "%s", err);
    err[0] = '\0';
    cr_expect_eq(load_fail("truncated.xml", err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "truncated.xml") != NULL, "%s", err);
}

Test(topo, xml_v3_names_both_hwloc_versions, .timeout = 10)
{
    char err[512] = "";

    cr_expect_eq(load_fail("v3-format.xml", err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "XML version 3.0") != NULL && strstr(err, "hwloc 2.") != NULL, "%s", err);
}

/* hwloc's PCI plugin (through libpciaccess) leaves allocations behind and is unloaded before
 * LeakSanitizer looks, which then cannot name them. Keeping it loaded lets tests/lsan.supp
 * recognise them. */
static void keep_pci_plugin(void)
{
    static const char *const dirs[] = {"/usr/lib/x86_64-linux-gnu/hwloc", "/usr/lib/hwloc",
                                       "/usr/local/lib/hwloc"};

    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        char path[256];

        snprintf(path, sizeof(path), "%s/hwloc_pci.so", dirs[i]);
        if (dlopen(path, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE) != NULL) {
            return;
        }
    }
}

/* The live host: this machine has no GPU; NICs depend on where the test runs (a namespace may
 * have only loopback, which is no PCI device). The model must load and be consistent. */
Test(topo, live_host_loads, .timeout = 30)
{
    struct fx_topo *t;
    char err[512] = "";

    keep_pci_plugin();
    unsetenv("FX_TOPO_FILE");
    cr_assert_eq(fx_topo_load(&t, NULL, err, sizeof(err)), FX_OK, "%s", err);
    cr_expect(fx_topo_is_live(t));
    cr_expect_geq(fx_topo_num_numa(t), 1);
    for (int n = 0; n < fx_topo_num_nics(t); n++) {
        cr_expect_eq(strlen(fx_topo_nic(t, n)->pci), 12u, "bus id '%s'", fx_topo_nic(t, n)->pci);
    }
    if (fx_topo_num_nics(t) > 0) {
        cr_expect_geq(fx_topo_nearest_nic_to_cpus(t, NULL), 0);
    }
    fx_topo_free(t);
}

Test(topo, fx_topo_file_selects_a_recorded_topology, .timeout = 30)
{
    const char *src = getenv("LIBFABRICX_TEST_SOURCE_DIR");
    char path[1024];
    char err[512] = "";
    struct fx_topo *t;

    cr_assert_not_null(src);
    snprintf(path, sizeof(path), "%s/tests/data/topologies/topo.dp-esb01.xml", src);
    setenv("FX_TOPO_FILE", path, 1);
    cr_assert_eq(fx_topo_load(&t, NULL, err, sizeof(err)), FX_OK, "%s", err);
    cr_expect_not(fx_topo_is_live(t));
    cr_expect_eq(fx_topo_num_gpus(t), 1);
    fx_topo_free(t);
    unsetenv("FX_TOPO_FILE");
}

/* fx-topo --json over a recorded file: valid JSON (checked with python3's parser) carrying the
 * documented keys and the PIX pair of JURECA-DC's first A100. */
Test(topo, fx_topo_json_output, .timeout = 60)
{
    const char *src = getenv("LIBFABRICX_TEST_SOURCE_DIR");
    const char *bld = getenv("LIBFABRICX_TEST_BUILD_DIR");
    char cmd[4096];
    char out[65536];
    size_t n;
    FILE *p;

    cr_assert(src != NULL && bld != NULL, "run through meson test");
    snprintf(cmd, sizeof(cmd),
             "%s/tools/fx-topo --json --input %s/tests/data/topologies/topo.jrc0323.xml", bld, src);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n      = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "fx-topo failed: %s", out);
    for (const char *const *k = (const char *const[]){"\"gpus\"", "\"nics\"", "\"paths\"",
                                                      "\"nearest_nic\"", "\"netdevs\"", NULL};
         *k != NULL; k++) {
        cr_expect(strstr(out, *k) != NULL, "no %s in %s", *k, out);
    }
    cr_expect(strstr(out, "{\"gpu\": \"0000:03:00.0\", \"nic\": \"0000:04:00.0\", \"class\": "
                          "\"PIX\"}") != NULL,
              "missing the PIX pair: %s", out);
    cr_expect(strstr(out, "\"0000:03:00.0\": \"0000:04:00.0\"") != NULL, "nearest_nic: %s", out);
    snprintf(cmd, sizeof(cmd),
             "%s/tools/fx-topo --json --input %s/tests/data/topologies/topo.jrc0323.xml | "
             "python3 -c 'import json,sys; d=json.load(sys.stdin); "
             "sys.exit(0 if len(d[\"gpus\"]) == 4 and len(d[\"paths\"]) == 24 else 1)'",
             bld, src);
    cr_expect_eq(system(cmd), 0, "fx-topo --json is not the expected JSON");
    snprintf(cmd, sizeof(cmd), "%s/tools/fx-topo --input /nonexistent.xml 2>&1", bld);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n      = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    cr_expect_neq(pclose(p), 0, "fx-topo succeeded on a missing file");
    cr_expect(strstr(out, "/nonexistent.xml") != NULL, "error names no file: %s", out);
}

Test(topo, binding_refuses_a_recorded_topology, .timeout = 10)
{
    struct fx_topo *t = load("topo.jrc0323.xml");
    char err[512]     = "";

    cr_expect_eq(fx_topo_bind_near_nic(t, 0, err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "file") != NULL, "%s", err);
    fx_topo_free(t);
}

/* On the live host (each test runs in its own process): after binding near NIC 0, the
 * process's CPU binding lies within that NIC's CPUs. */
Test(topo, binding_near_a_nic_on_the_live_host, .timeout = 30)
{
    struct fx_topo *t;
    char err[512] = "";
    hwloc_topology_t h;
    hwloc_bitmap_t want = hwloc_bitmap_alloc();
    hwloc_bitmap_t got  = hwloc_bitmap_alloc();

    keep_pci_plugin();
    unsetenv("FX_TOPO_FILE");
    cr_assert_eq(fx_topo_load(&t, NULL, err, sizeof(err)), FX_OK, "%s", err);
    if (fx_topo_num_nics(t) == 0) {
        cr_expect_eq(fx_topo_bind_near_nic(t, 0, err, sizeof(err)), FX_ERR_INVALID_ARG);
        fx_topo_free(t);
        cr_skip_test("no PCI NIC visible here (a network namespace?): nothing to bind near");
    }
    cr_assert_eq(fx_topo_bind_near_nic(t, 0, err, sizeof(err)), FX_OK, "%s", err);
    cr_assert_eq(hwloc_bitmap_list_sscanf(want, fx_topo_nic(t, 0)->cpus), 0);
    cr_assert_eq(hwloc_topology_init(&h), 0);
    cr_assert_eq(hwloc_topology_load(h), 0);
    cr_assert_eq(hwloc_get_cpubind(h, got, HWLOC_CPUBIND_PROCESS), 0);
    cr_expect(hwloc_bitmap_isincluded(got, want), "bound outside the NIC's CPUs %s",
              fx_topo_nic(t, 0)->cpus);
    hwloc_topology_destroy(h);
    hwloc_bitmap_free(want);
    hwloc_bitmap_free(got);
    fx_topo_free(t);
}
