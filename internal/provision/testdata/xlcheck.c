/*
 * xlcheck: read an xl configuration with Xen's own parser (libxlutil, the
 * library xl uses) and print what it understood, so that ssi's Go tests can
 * compare it with what they encoded. Built and run by xlcheck_test.go when
 * libxlutil.so.4.17 (Debian 12 package libxenmisc4.17, pulled in by
 * xen-utils-4.17) and a C compiler are installed. No Xen headers are
 * needed: the few declarations used are written out below.
 *
 * Usage: xlcheck FILE KEY...
 * Output, one line each, values in hex so that any byte survives:
 *   read OK                      (or "read ERROR <errno>", exit 1)
 *   KEY s HEX                    a string or number setting
 *   KEY l N                      a list of N items, followed by
 *   KEY[I] HEX                   each item
 *   KEY[I]:disk TARGET-HEX VDEV-HEX RW   for KEY "disk": xlu_disk_parse result
 *   KEY missing
 */
#include <stdio.h>
#include <stdint.h>
#include <string.h>

typedef struct XLU_Config XLU_Config;
typedef struct XLU_ConfigList XLU_ConfigList;
XLU_Config *xlu_cfg_init(FILE *report, const char *report_filename);
int xlu_cfg_readfile(XLU_Config *, const char *real_filename);
int xlu_cfg_get_string(const XLU_Config *, const char *n, const char **value_r, int dont_warn);
int xlu_cfg_get_list(const XLU_Config *, const char *n, XLU_ConfigList **list_r, int *entries_r, int dont_warn);
const char *xlu_cfg_get_listitem(const XLU_ConfigList *, int entry);
int xlu_disk_parse(XLU_Config *cfg, int nspecs, const char *const *specs, void *disk);
void libxl_device_disk_init(void *disk);

/* Offsets in libxl_device_disk of Xen 4.17 on x86-64 (_libxl_types.h):
 * uint32 backend_domid; char *backend_domname; char *pdev_path;
 * char *vdev; int backend; int format; char *script; int removable;
 * int readwrite. */
#define DISK_PDEV_PATH 16
#define DISK_VDEV 24
#define DISK_READWRITE 52

static void hex(const char *s) {
    if (!s) { printf("-"); return; }
    if (!*s) { printf("."); return; }
    for (; *s; s++) printf("%02x", (unsigned char)*s);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: xlcheck FILE KEY...\n"); return 2; }
    XLU_Config *cfg = xlu_cfg_init(stderr, argv[1]);
    if (!cfg) { perror("xlu_cfg_init"); return 2; }
    int r = xlu_cfg_readfile(cfg, argv[1]);
    if (r) { printf("read ERROR %d\n", r); return 1; }
    printf("read OK\n");
    for (int i = 2; i < argc; i++) {
        const char *key = argv[i], *s;
        XLU_ConfigList *list;
        int n;
        if (xlu_cfg_get_string(cfg, key, &s, 1) == 0) {
            printf("%s s ", key); hex(s); printf("\n");
        } else if (xlu_cfg_get_list(cfg, key, &list, &n, 1) == 0) {
            printf("%s l %d\n", key, n);
            for (int j = 0; j < n; j++) {
                const char *item = xlu_cfg_get_listitem(list, j);
                printf("%s[%d] ", key, j); hex(item); printf("\n");
                if (strcmp(key, "disk") == 0 && item) {
                    _Alignas(16) unsigned char disk[4096];
                    memset(disk, 0, sizeof disk);
                    libxl_device_disk_init(disk);
                    int e = xlu_disk_parse(cfg, 1, &item, disk);
                    if (e) { printf("%s[%d]:disk ERROR %d\n", key, j, e); continue; }
                    printf("%s[%d]:disk ", key, j);
                    hex(*(char **)(disk + DISK_PDEV_PATH)); printf(" ");
                    hex(*(char **)(disk + DISK_VDEV));
                    printf(" %d\n", *(int *)(disk + DISK_READWRITE));
                }
            }
        } else {
            printf("%s missing\n", key);
        }
    }
    return 0;
}
