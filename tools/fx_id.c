/*
 * fx-id: prints a new unique id (the string form of fx_get_unique_id) on stdout, for launchers
 * that start ranks as separate processes and hand them FX_UNIQUE_ID (scripts/netns-run.sh).
 *
 *   fx-id
 *
 * The id carries the addresses of the interfaces FX_SOCKET_IFNAME selects, so run it on (or in
 * the network namespace of) the host where rank 0 will run. The listener fx_get_unique_id opens
 * closes when fx-id exits; rank 0 then binds the id's port itself (fx_comm_init_rank does so
 * when its process does not hold the listener). Public API only.
 */
#include <stdio.h>
#include <string.h>

#include "fabricx.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: fx-id\n"
                 "  prints a new libfabricx unique id for FX_UNIQUE_ID; the bootstrap address\n"
                 "  follows FX_SOCKET_IFNAME, so run it where rank 0 will run\n");
}

int main(int argc, char **argv)
{
    char text[FX_UNIQUE_ID_STRLEN];
    fx_unique_id id;
    fx_status s;

    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 1) {
        usage(stderr);
        return 2;
    }
    s = fx_get_unique_id(&id);
    if (s == FX_OK) {
        s = fx_unique_id_to_string(&id, text, sizeof(text));
    }
    if (s != FX_OK) {
        fprintf(stderr, "fx-id: %s: %s\n", fx_strerror(s), fx_last_error());
        return 1;
    }
    printf("%s\n", text);
    return 0;
}
