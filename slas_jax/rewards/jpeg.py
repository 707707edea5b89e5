"""DanceGRPO's image path before HPS-v2.1 scoring, in JAX: ``(image * 255).astype(np.uint8)``, PIL's
``resize((512, 512))`` (bicubic, Pillow's default for RGB) and a ``.jpg`` written and read back by PIL (libjpeg-turbo
defaults: quality 75, 4:2:0 chroma subsampling, the standard quantisation tables scaled by quality, integer DCT
both ways, "fancy" triangle upsampling of chroma). Everything is integer arithmetic on int32, step for step as
Pillow's Resample.c and libjpeg-turbo (jccolor.c, jcsample.c, jfdctint.c, jcdctmgr.c, jidctint.c, jdsample.c,
jdcolor.c) compute it, so it runs inside a jitted step without host callbacks. Entropy coding is lossless and
left out. The agreement with PIL (Pillow 13, libjpeg-turbo) is measured by tests/rewards/test_jpeg.py.

Images are (b, h, w, 3); pixel arrays hold integer levels 0..255 as int32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DANCE_GRPO_SIZE = 512
"""Side of the square image DanceGRPO's SD script saves before scoring (``pil.resize((512, 512))``)."""
DEFAULT_QUALITY = 75
"""PIL's (libjpeg's ``jpeg_set_defaults``) quality when ``save`` is given none."""

# libjpeg's Annex K tables (jcparam.c), natural (row-major) order: [vertical frequency, horizontal frequency].
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)

SCALEBITS = 16  # jccolor.c / jdcolor.c fixed point
CONST_BITS = 13  # jfdctint.c / jidctint.c fixed point
PASS1_BITS = 2
PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow Resample.c, 8-bit images


def _fix(x: float, bits: int) -> int:
    """libjpeg's FIX(x): x in fixed point with ``bits`` fraction bits, rounded."""
    return int(x * (1 << bits) + 0.5)


def quantization_tables(quality: int) -> np.ndarray:
    """(2, 8, 8) int32: the luminance and chrominance tables of ``jpeg_set_quality(quality, TRUE)``:
    libjpeg's ``jpeg_quality_scaling`` (5000 / q below 50, else 200 - 2q, in percent), each entry
    ``(basic * scale + 50) // 100`` clamped to [1, 255] (baseline)."""
    quality = min(max(quality, 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    basic = np.asarray([LUMINANCE_TABLE, CHROMINANCE_TABLE], np.int64)
    return np.clip((basic * scale + 50) // 100, 1, 255).astype(np.int32)


def _reciprocals(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """jcdctmgr.c ``compute_reciprocal`` for the divisors ``8 * table`` (the integer DCT's outputs are 8x
    the DCT), as libjpeg-turbo's SIMD build (16-bit DCTELEM) uses them: (reciprocal, correction, shift) with
    ``q = ((|x| + correction) * reciprocal) >> shift``, each int64 of the table's shape."""
    divisor = table.astype(np.int64) * 8
    b = np.floor(np.log2(divisor)).astype(np.int64)
    r = 16 + b
    fq = (np.int64(1) << r) // divisor
    fr = (np.int64(1) << r) % divisor
    c = divisor // 2
    power_of_two = fr == 0
    fq = np.where(power_of_two, fq >> 1, np.where(fr > divisor // 2, fq + 1, fq))
    r = np.where(power_of_two, r - 1, r)
    c = np.where(~power_of_two & (fr <= divisor // 2), c + 1, c)
    return fq, c, r


def to_uint8(images: jax.Array) -> jax.Array:
    """images (b, h, w, 3) float in [0, 1] -> levels int32: DanceGRPO's ``(image * 255).astype(np.uint8)``
    on float32, i.e. truncation (values outside [0, 1] are clipped first; numpy leaves them undefined)."""
    return jnp.floor(jnp.clip(images.astype(jnp.float32), 0.0, 1.0) * 255.0).astype(jnp.int32)


def to_unit(levels: jax.Array) -> jax.Array:
    """levels int32 0..255 -> float32 ``level / 255`` correctly rounded, as torchvision's ``ToTensor``
    divides. A table lookup, because XLA may turn a division by the constant 255 into a multiplication by
    its reciprocal, one ulp off for about half the levels."""
    table = np.arange(256, dtype=np.float32) / np.float32(255)
    return jnp.asarray(table)[levels]


# --------------------------------------------------------------------------------------------- PIL resize


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic_filter (Keys, a = -0.5), float64 as in C."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_resize_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for BICUBIC over the whole input: (index, weight),
    each (out_size, taps) int32; output ``o`` is ``sum_k weight[o, k] * input[index[o, k]]`` in fixed point
    with PIL_PRECISION_BITS fraction bits. Unused taps have weight 0 (and a valid index)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    taps = math.ceil(support) * 2 + 1
    index = np.zeros((out_size, taps), np.int32)
    weight = np.zeros((out_size, taps), np.int32)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        # C's (int) truncates toward zero, then clamps to the image.
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        x = np.arange(xmax)
        w = _bicubic((x + xmin - center + 0.5) * (1.0 / filterscale))
        total = 0.0
        for value in w:  # summed in C's order
            total += value
        if total != 0.0:
            w = w / total
        scaled = w * (1 << PIL_PRECISION_BITS)
        weight[xx, :xmax] = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled))
        index[xx, :xmax] = xmin + x
    return index, weight


def _resample_axis(pixels: jax.Array, out_size: int, axis: int) -> jax.Array:
    """One of Pillow's 8-bit passes along ``axis``: int32 accumulation from 1 << (bits - 1), then clip8."""
    index, weight = pil_resize_coefficients(pixels.shape[axis], out_size)
    shape = [1] * pixels.ndim
    shape[axis] = out_size
    total = jnp.full((), 1 << (PIL_PRECISION_BITS - 1), jnp.int32)
    # One tap at a time: XLA fuses gather, product and sum without a (..., out, taps) intermediate.
    for k in range(index.shape[1]):
        tap = jnp.take(pixels, jnp.asarray(index[:, k]), axis=axis)
        total = total + tap * jnp.asarray(weight[:, k]).reshape(shape)
    return jnp.clip(total >> PIL_PRECISION_BITS, 0, 255)


def pil_resize(pixels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """pixels (b, h, w, c) int32 levels -> (b, size[0], size[1], c) int32: ``Image.resize((size[1],
    size[0]))`` with Pillow's default BICUBIC on 8-bit images, two passes clipped to 8 bits in between. A pass
    whose size does not change is skipped (the same size is a copy). The order is Pillow 13's
    (ImagingResampleInner): vertical first when the height shrinks by more than twice as many pixels as the
    width, else horizontal first (Pillow 12 and earlier always went horizontal first)."""
    height, width = size
    in_height, in_width = pixels.shape[1], pixels.shape[2]
    vertical_first = in_height - height > 0 and in_height - height > 2 * (in_width - width)
    passes = [(height, 1), (width, 2)] if vertical_first else [(width, 2), (height, 1)]
    for out_size, axis in passes:
        if pixels.shape[axis] != out_size:
            pixels = _resample_axis(pixels, out_size, axis)
    return pixels


# ------------------------------------------------------------------------------------------------ encoder


def rgb_to_ycbcr(pixels: jax.Array) -> jax.Array:
    """(..., 3) int32 RGB -> (..., 3) int32 YCbCr, jccolor.c's rgb_ycc_convert (16-bit fixed point; the
    ``ONE_HALF - 1`` keeps Cb and Cr at most 255)."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    half = 1 << (SCALEBITS - 1)
    offset = 128 << SCALEBITS

    def fix(x: float) -> int:
        return _fix(x, SCALEBITS)

    y = (fix(0.299) * r + fix(0.587) * g + fix(0.114) * b + half) >> SCALEBITS
    cb = (-fix(0.16874) * r - fix(0.33126) * g + fix(0.5) * b + offset + half - 1) >> SCALEBITS
    cr = (fix(0.5) * r - fix(0.41869) * g - fix(0.08131) * b + offset + half - 1) >> SCALEBITS
    return jnp.stack([y, cb, cr], axis=-1)


def _pad_edge(plane: jax.Array, height: int, width: int) -> jax.Array:
    """(b, h, w) -> (b, height, width), repeating the last row / column (libjpeg's expand_*_edge)."""
    _, h, w = plane.shape
    return jnp.pad(plane, ((0, 0), (0, height - h), (0, width - w)), mode="edge")


def downsample_h2v2(plane: jax.Array) -> jax.Array:
    """(b, 2h, 2w) int32 -> (b, h, w): jcsample.c's h2v2_downsample, the 2x2 mean with the bias 1, 2, 1, 2...
    along each row (so that rounding does not drift one way)."""
    total = plane[:, 0::2, 0::2] + plane[:, 0::2, 1::2] + plane[:, 1::2, 0::2] + plane[:, 1::2, 1::2]
    bias = 1 + jnp.arange(total.shape[2], dtype=jnp.int32) % 2
    return (total + bias) >> 2


def _descale(x: jax.Array, n: int) -> jax.Array:
    """libjpeg's DESCALE: x / 2^n rounded half up (arithmetic shift)."""
    return (x + (1 << (n - 1))) >> n


# jfdctint.c / jidctint.c multipliers, FIX(x) with CONST_BITS fraction bits (FIX_0_298631336 = 2446, ...).
_F = {
    name: _fix(float(name), CONST_BITS)
    for name in (
        "0.298631336",
        "0.390180644",
        "0.541196100",
        "0.765366865",
        "0.899976223",
        "1.175875602",
        "1.501321110",
        "1.847759065",
        "1.961570560",
        "2.053119869",
        "2.562915447",
        "3.072711026",
    )
}


def _fdct_1d(d: Sequence[jax.Array], first: bool) -> list[jax.Array]:
    """One pass of jfdctint.c's jpeg_fdct_islow (LL&M) over 8 samples; the first (row) pass keeps
    PASS1_BITS of extra precision, the second (column) pass removes it."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    shift = CONST_BITS - PASS1_BITS if first else CONST_BITS + PASS1_BITS
    if first:
        even = [(tmp10 + tmp11) << PASS1_BITS, (tmp10 - tmp11) << PASS1_BITS]
    else:
        even = [_descale(tmp10 + tmp11, PASS1_BITS), _descale(tmp10 - tmp11, PASS1_BITS)]
    z1 = (tmp12 + tmp13) * _F["0.541196100"]
    out2 = _descale(z1 + tmp13 * _F["0.765366865"], shift)
    out6 = _descale(z1 - tmp12 * _F["1.847759065"], shift)
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F["1.175875602"]
    tmp4 = tmp4 * _F["0.298631336"]
    tmp5 = tmp5 * _F["2.053119869"]
    tmp6 = tmp6 * _F["3.072711026"]
    tmp7 = tmp7 * _F["1.501321110"]
    z1 = z1 * -_F["0.899976223"]
    z2 = z2 * -_F["2.562915447"]
    z3 = z3 * -_F["1.961570560"] + z5
    z4 = z4 * -_F["0.390180644"] + z5
    out1 = _descale(tmp7 + z1 + z4, shift)
    out3 = _descale(tmp6 + z2 + z3, shift)
    out5 = _descale(tmp5 + z2 + z4, shift)
    out7 = _descale(tmp4 + z1 + z3, shift)
    return [even[0], out1, out2, out3, even[1], out5, out6, out7]


def _idct_1d(d: Sequence[jax.Array], first: bool) -> list[jax.Array]:
    """One pass of jidctint.c's jpeg_idct_islow over 8 coefficients: the first (column) pass leaves
    PASS1_BITS of extra precision, the second (row) pass also removes the factor 8. jidctint.c's shortcuts
    for all-zero AC inputs give the same values, so they are not taken."""
    z1 = (d[2] + d[6]) * _F["0.541196100"]
    tmp2 = z1 - d[6] * _F["1.847759065"]
    tmp3 = z1 + d[2] * _F["0.765366865"]
    tmp0 = (d[0] + d[4]) << CONST_BITS
    tmp1 = (d[0] - d[4]) << CONST_BITS
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    tmp0, tmp1, tmp2, tmp3 = d[7], d[5], d[3], d[1]
    z1, z2, z3, z4 = tmp0 + tmp3, tmp1 + tmp2, tmp0 + tmp2, tmp1 + tmp3
    z5 = (z3 + z4) * _F["1.175875602"]
    tmp0 = tmp0 * _F["0.298631336"]
    tmp1 = tmp1 * _F["2.053119869"]
    tmp2 = tmp2 * _F["3.072711026"]
    tmp3 = tmp3 * _F["1.501321110"]
    z1 = z1 * -_F["0.899976223"]
    z2 = z2 * -_F["2.562915447"]
    z3 = z3 * -_F["1.961570560"] + z5
    z4 = z4 * -_F["0.390180644"] + z5
    tmp0 = tmp0 + z1 + z3
    tmp1 = tmp1 + z2 + z4
    tmp2 = tmp2 + z2 + z3
    tmp3 = tmp3 + z1 + z4
    shift = CONST_BITS - PASS1_BITS if first else CONST_BITS + PASS1_BITS + 3
    return [
        _descale(v, shift)
        for v in (
            tmp10 + tmp3,
            tmp11 + tmp2,
            tmp12 + tmp1,
            tmp13 + tmp0,
            tmp13 - tmp0,
            tmp12 - tmp1,
            tmp11 - tmp2,
            tmp10 - tmp3,
        )
    ]


def _along(fn, blocks: jax.Array, axis: int, first: bool) -> jax.Array:
    """Applies a 1-D 8-point pass ``fn`` along ``axis`` (-1: within rows, -2: within columns) of
    (..., 8, 8) blocks."""
    parts = fn([jnp.take(blocks, i, axis=axis) for i in range(8)], first)
    return jnp.stack(parts, axis=axis)


def _blocks(plane: jax.Array) -> jax.Array:
    """(b, 8m, 8n) -> (b, m, n, 8, 8)."""
    b, h, w = plane.shape
    return plane.reshape(b, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)


def _unblocks(blocks: jax.Array) -> jax.Array:
    """(b, m, n, 8, 8) -> (b, 8m, 8n)."""
    b, m, n, _, _ = blocks.shape
    return blocks.transpose(0, 1, 3, 2, 4).reshape(b, 8 * m, 8 * n)


def encode_plane(plane: jax.Array, table: np.ndarray) -> jax.Array:
    """(b, 8m, 8n) int32 samples -> (b, m, n, 8, 8) int32 quantised coefficients: level shift by 128,
    jpeg_fdct_islow (rows, then columns), jcdctmgr.c's quantize by reciprocal multiplication."""
    coefficients = _along(_fdct_1d, _blocks(plane - 128), axis=-1, first=True)
    coefficients = _along(_fdct_1d, coefficients, axis=-2, first=False)
    reciprocal, correction, shift = (jnp.asarray(a, jnp.uint32) for a in _reciprocals(table))
    # (|x| + c) * reciprocal < 2^32 for 8-bit samples, so uint32 holds libjpeg-turbo's product.
    magnitude = ((jnp.abs(coefficients).astype(jnp.uint32) + correction) * reciprocal) >> shift
    return jnp.sign(coefficients) * magnitude.astype(jnp.int32)


# ------------------------------------------------------------------------------------------------ decoder


def _idct_range_limit(x: jax.Array) -> jax.Array:
    """jidctint.c's ``range_limit[x & RANGE_MASK]`` (jdmaster.c's table): x + 128 clamped to 0..255 for x in
    [-512, 511], wrapping around outside it as libjpeg's table does."""
    wrapped = ((x + 512) & 1023) - 512
    return jnp.clip(wrapped + 128, 0, 255)


def decode_plane(coefficients: jax.Array, table: np.ndarray) -> jax.Array:
    """(b, m, n, 8, 8) quantised coefficients -> (b, 8m, 8n) int32 samples: dequantise, jpeg_idct_islow
    (columns, then rows), range limit."""
    values = coefficients * jnp.asarray(table)
    values = _along(_idct_1d, values, axis=-2, first=True)
    values = _along(_idct_1d, values, axis=-1, first=False)
    return _unblocks(_idct_range_limit(values))


def upsample_h2v2_fancy(plane: jax.Array) -> jax.Array:
    """(b, h, w) int32 -> (b, 2h, 2w): jdsample.c's h2v2_fancy_upsample, the triangle filter (3/4 nearer,
    1/4 farther sample in each direction) with the edge samples repeated, rounding biases 8 and 7 for even
    and odd output columns. Inputs 2 or fewer samples wide take h2v2_upsample (pixel doubling), as
    libjpeg-turbo does."""
    if plane.shape[2] <= 2:
        return jnp.repeat(jnp.repeat(plane, 2, axis=1), 2, axis=2)
    padded = jnp.pad(plane, ((0, 0), (1, 1), (0, 0)), mode="edge")
    above, below = padded[:, :-2], padded[:, 2:]
    # Column sums: output row 2r leans on the row above, row 2r + 1 on the row below.
    sums = jnp.stack([3 * plane + above, 3 * plane + below], axis=2).reshape(
        plane.shape[0], 2 * plane.shape[1], plane.shape[2]
    )
    padded = jnp.pad(sums, ((0, 0), (0, 0), (1, 1)), mode="edge")
    left, right = padded[:, :, :-2], padded[:, :, 2:]
    even = (3 * sums + left + 8) >> 4
    odd = (3 * sums + right + 7) >> 4
    return jnp.stack([even, odd], axis=3).reshape(sums.shape[0], sums.shape[1], 2 * sums.shape[2])


def ycbcr_to_rgb(ycbcr: jax.Array) -> jax.Array:
    """(..., 3) int32 YCbCr -> (..., 3) int32 RGB: jdcolor.c's ycc_rgb_convert (its tables computed
    inline), clamped to 0..255."""
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1] - 128, ycbcr[..., 2] - 128
    half = 1 << (SCALEBITS - 1)

    def fix(x: float) -> int:
        return _fix(x, SCALEBITS)

    r = y + ((fix(1.402) * cr + half) >> SCALEBITS)
    g = y + ((-fix(0.34414) * cb + half - fix(0.71414) * cr) >> SCALEBITS)
    b = y + ((fix(1.772) * cb + half) >> SCALEBITS)
    return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255)


# ------------------------------------------------------------------------------------------------ round trip


def jpeg_round_trip_levels(pixels: jax.Array, quality: int = DEFAULT_QUALITY) -> jax.Array:
    """pixels (b, h, w, 3) int32 levels 0..255 -> (b, h, w, 3) int32: PIL's ``save(path, "JPEG",
    quality=quality)`` (4:2:0) then ``Image.open(path)``, as integer maths.

    Encoder padding follows libjpeg: luminance repeats the last row / column to whole blocks; chroma is
    downsampled from the image with its last column repeated to whole 16-pixel MCUs and its last row to an
    even count, then its own last row repeated to whole blocks. The decoder upsamples only the real chroma
    samples (ceil(h/2) x ceil(w/2)), the edges repeated, as libjpeg's context rows do.
    """
    _, h, w, _ = pixels.shape
    tables = quantization_tables(quality)
    ycbcr = rgb_to_ycbcr(pixels)
    luma_h, luma_w = 8 * math.ceil(h / 8), 8 * math.ceil(w / 8)
    chroma_h, chroma_w = math.ceil(h / 2), math.ceil(w / 2)
    luma = decode_plane(encode_plane(_pad_edge(ycbcr[..., 0], luma_h, luma_w), tables[0]), tables[0])
    planes = [luma[:, :h, :w]]
    for c in (1, 2):
        full = _pad_edge(ycbcr[..., c], 2 * chroma_h, 16 * math.ceil(w / 16))
        chroma = _pad_edge(downsample_h2v2(full), 8 * math.ceil(chroma_h / 8), full.shape[2] // 2)
        decoded = decode_plane(encode_plane(chroma, tables[1]), tables[1])[:, :chroma_h, :chroma_w]
        planes.append(upsample_h2v2_fancy(decoded)[:, :h, :w])
    return ycbcr_to_rgb(jnp.stack(planes, axis=-1))


def jpeg_round_trip(images: jax.Array, quality: int = DEFAULT_QUALITY) -> jax.Array:
    """images (b, h, w, 3) float in [0, 1] -> (b, h, w, 3) float32 in [0, 1], multiples of 1/255: DanceGRPO's
    uint8 conversion (:func:`to_uint8`), the JPEG round trip (:func:`jpeg_round_trip_levels`), then
    torchvision's ``ToTensor`` (:func:`to_unit`)."""
    return to_unit(jpeg_round_trip_levels(to_uint8(images), quality))


def dance_grpo_jpeg(
    images: jax.Array, quality: int = DEFAULT_QUALITY, size: int = DANCE_GRPO_SIZE
) -> jax.Array:
    """images (b, h, w, 3) float in [0, 1] -> (b, size, size, 3) float32 in [0, 1], multiples of 1/255:
    DanceGRPO's scoring input (fastvideo/train_grpo_sd.py): uint8 conversion, ``pil.resize((size, size))``
    (:func:`pil_resize`), ``.jpg`` save and load, ``ToTensor`` (:func:`to_unit`)."""
    levels = pil_resize(to_uint8(images), (size, size))
    return to_unit(jpeg_round_trip_levels(levels, quality))
