/*
 * CZstd: the system libzstd (apt: libzstd-dev) plus the few helpers Swift
 * cannot express. Only Sources/Migrate/PageCodec.swift imports this module.
 *
 * Everything here is static inline: this is a system-library target, so it
 * has no C sources of its own. Functions return a value or -errno.
 */
#ifndef PVMIGRATE_CZSTD_SHIM_H
#define PVMIGRATE_CZSTD_SHIM_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <zstd.h>
#include <zstd_errors.h>

/// The parts of a zstd frame header (RFC 8878 §3.1.1.1) the page codec checks
/// before it lets libzstd decode anything.
typedef struct pvm_zstd_frame_info {
    /// Size of the whole frame header, magic number included, in bytes.
    size_t header_size;
    /// The decompressed size the frame declares; valid only if has_content_size.
    unsigned long long content_size;
    /// 1 if the header declares the decompressed size, 0 if it does not.
    int has_content_size;
    /// 1 if the frame ends with an XXH64 content checksum, 0 if it does not.
    int has_checksum;
} pvm_zstd_frame_info;

/// Parses the header of the zstd frame at the start of `src` (`size` bytes)
/// without decoding any block.
///
/// Returns 0 and fills `*out` on success.
/// Returns -EINVAL if `out` is NULL, `src` is NULL with `size` > 0, the
/// magic number is not the zstd frame magic (skippable and legacy frames are
/// rejected too), the reserved header bit is set, or libzstd rejects the
/// header.
/// Returns -EMSGSIZE if `size` is 0 or too small to hold the whole header
/// (the input is truncated).
static inline int pvm_zstd_frame_info_parse(const void *src, size_t size,
                                            pvm_zstd_frame_info *out) {
    if (out == NULL) return -EINVAL;
    if (size == 0) return -EMSGSIZE;
    if (src == NULL) return -EINVAL;
    const unsigned char *p = (const unsigned char *)src;
    /* Compare the magic number byte by byte so a short prefix of something
       that is not a zstd frame reads as -EINVAL, not as truncation. */
    static const unsigned char magic[4] = {
        ZSTD_MAGICNUMBER & 0xff, (ZSTD_MAGICNUMBER >> 8) & 0xff,
        (ZSTD_MAGICNUMBER >> 16) & 0xff, (ZSTD_MAGICNUMBER >> 24) & 0xff,
    };
    for (size_t i = 0; i < 4 && i < size; i++) {
        if (p[i] != magic[i]) return -EINVAL;
    }
    if (size < 5) return -EMSGSIZE;

    unsigned char fhd = p[4];
    unsigned fcs_flag = fhd >> 6;
    unsigned single_segment = (fhd >> 5) & 1;
    unsigned reserved = (fhd >> 3) & 1;
    unsigned checksum = (fhd >> 2) & 1;
    unsigned did_flag = fhd & 3;
    if (reserved) return -EINVAL;

    static const size_t did_sizes[4] = {0, 1, 2, 4};
    static const size_t fcs_sizes[4] = {0, 2, 4, 8};
    size_t fcs_size = fcs_sizes[fcs_flag];
    if (fcs_flag == 0 && single_segment) fcs_size = 1;
    size_t header = 4 + 1 + (single_segment ? 0 : 1) + did_sizes[did_flag] + fcs_size;
    if (size < header) return -EMSGSIZE;

    unsigned long long declared = ZSTD_getFrameContentSize(src, size);
    if (declared == ZSTD_CONTENTSIZE_ERROR) return -EINVAL;

    out->header_size = header;
    out->has_content_size = declared != ZSTD_CONTENTSIZE_UNKNOWN;
    out->content_size = out->has_content_size ? declared : 0;
    out->has_checksum = (int)checksum;
    return 0;
}

#endif /* PVMIGRATE_CZSTD_SHIM_H */
