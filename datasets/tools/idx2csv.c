/* idx2csv.c - converts an IDX image file and its IDX label file (the MNIST / Fashion-MNIST
 * format: big-endian magic 0x00000803 / 0x00000801, dimensions, then unsigned bytes) into a CSV
 * with a header "p0,...,pN-1,label", pixel values 0..255 unchanged. `make fashion` feeds it the
 * files of Debian's dataset-fashion-mnist package (gunzipped).
 *
 * usage: idx2csv IMAGES LABELS OUT.csv [MAXROWS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int be32(FILE *f, uint32_t *v)
{
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4)
        return -1;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: idx2csv IMAGES LABELS OUT.csv [MAXROWS]\n");
        return 2;
    }
    FILE *fi = fopen(argv[1], "rb"), *fl = fopen(argv[2], "rb"), *fo = fopen(argv[3], "w");
    uint32_t mi, ni, rows, cols, ml, nl;
    if (!fi || !fl || !fo) {
        fprintf(stderr, "idx2csv: cannot open %s\n", !fi ? argv[1] : !fl ? argv[2] : argv[3]);
        return 1;
    }
    if (be32(fi, &mi) || be32(fi, &ni) || be32(fi, &rows) || be32(fi, &cols) || mi != 0x803 ||
        be32(fl, &ml) || be32(fl, &nl) || ml != 0x801 || nl != ni || rows * cols > 1u << 20) {
        fprintf(stderr, "idx2csv: %s / %s are not a matching IDX image/label pair\n", argv[1],
                argv[2]);
        return 1;
    }
    uint32_t n = ni;
    if (argc > 4 && (uint32_t)atol(argv[4]) < n)
        n = (uint32_t)atol(argv[4]);
    size_t px = (size_t)rows * cols;
    unsigned char *img = malloc(px);
    for (size_t j = 0; j < px; j++)
        fprintf(fo, "p%zu,", j);
    fprintf(fo, "label\n");
    for (uint32_t r = 0; r < n; r++) {
        int lab = fgetc(fl);
        if (fread(img, 1, px, fi) != px || lab == EOF) {
            fprintf(stderr, "idx2csv: %s ends early at item %u\n", argv[1], r);
            return 1;
        }
        for (size_t j = 0; j < px; j++)
            fprintf(fo, "%u,", img[j]);
        fprintf(fo, "%d\n", lab);
    }
    free(img);
    if (fclose(fo) != 0) {
        perror(argv[3]);
        return 1;
    }
    fprintf(stderr, "idx2csv: wrote %u rows of %zu pixels to %s\n", n, px, argv[3]);
    return 0;
}
