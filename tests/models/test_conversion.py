"""The declarative converter refuses checkpoints that do not fit the model, naming the offending tensor or
file: an extra tensor, a missing one, a wrong shape, a missing folder / config / weights file, and damaged
files (truncated or malformed safetensors, JSON that does not parse), each as one ConversionError line."""

import json
from collections.abc import Callable
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from slas_jax.models import conversion, vae
from slas_jax.models.conversion import ConversionError

TINY_VAE = dict(
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, np.ndarray]:
    """A complete diffusers AutoencoderKL state dict (reference names and layouts) as numpy arrays."""
    torch.manual_seed(0)
    return {k: v.numpy() for k, v in diffusers.AutoencoderKL(**TINY_VAE).state_dict().items()}


def load(tensors: dict[str, np.ndarray]) -> vae.AutoencoderKL:
    config = vae.VAEConfig.from_dict(TINY_VAE)
    return conversion.load_module(
        lambda: vae.AutoencoderKL(config, rngs=nnx.Rngs(0)), tensors, vae.CONVERSION_RULES, source="tiny vae"
    )


def test_complete_checkpoint_fills_every_parameter_once(checkpoint):
    model = load(checkpoint)
    np.testing.assert_array_equal(model.encoder.conv_in.bias[...], checkpoint["encoder.conv_in.bias"])
    np.testing.assert_array_equal(  # OIHW -> HWIO
        model.decoder.conv_out.kernel[...], checkpoint["decoder.conv_out.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(  # Linear (out, in) -> (in, out)
        model.decoder.mid_block.attentions[0].to_q.kernel[...],
        checkpoint["decoder.mid_block.attentions.0.to_q.weight"].T,
    )


def test_extra_tensor_is_named(checkpoint):
    with pytest.raises(
        ConversionError, match=r"tiny vae: tensor decoder\.extra_head\.weight maps to .* does not have"
    ):
        load({**checkpoint, "decoder.extra_head.weight": np.zeros((3, 3), np.float32)})


def test_missing_tensor_is_named(checkpoint):
    tensors = dict(checkpoint)
    del tensors["encoder.down_blocks.1.resnets.0.norm2.bias"]
    with pytest.raises(
        ConversionError, match=r"encoder\.down_blocks\.1\.resnets\.0\.norm2\.bias is not filled"
    ):
        load(tensors)


def test_wrong_shape_is_named(checkpoint):
    tensors = {**checkpoint, "decoder.conv_in.weight": np.zeros((16, 4, 1, 1), np.float32)}
    with pytest.raises(
        ConversionError,
        match=r"decoder\.conv_in\.weight has shape \(1, 1, 4, 16\) .* expects \(3, 3, 4, 16\)",
    ):
        load(tensors)


def test_loader_names_the_file_problem(tmp_path, checkpoint):
    with pytest.raises(ConversionError, match=r"absent/config\.json"):
        vae.load_vae(tmp_path / "absent")
    with pytest.raises(ConversionError, match=r"config\.json"):
        vae.load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY_VAE))
    with pytest.raises(ConversionError, match=r"no \*\.safetensors"):
        vae.load_vae(tmp_path)
    # Through the whole file path: a checkpoint missing one tensor fails with that tensor's name.
    save_file(
        {k: v for k, v in checkpoint.items() if k != "quant_conv.bias"},
        tmp_path / "diffusion_pytorch_model.safetensors",
    )
    with pytest.raises(ConversionError, match=r"quant_conv\.bias is not filled"):
        vae.load_vae(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Damaged files: one line naming the file.

WEIGHTS = "diffusion_pytorch_model.safetensors"


def header_length(data: bytes) -> int:
    """The JSON header length a safetensors file's first 8 bytes give (little-endian uint64)."""
    return int.from_bytes(data[:8], "little")


def tensor_bytes(data: bytes) -> int:
    """Bytes of tensor data after the header (the file's tail)."""
    return len(data) - 8 - header_length(data)


def with_header(data: bytes, header: bytes) -> bytes:
    """The file with its JSON header replaced by ``header`` (and the header length rewritten to match)."""
    return len(header).to_bytes(8, "little") + header + data[8 + header_length(data) :]


def edited_header(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    """A damage that applies ``edit`` to the header entry of the file's first tensor."""

    def damage(data: bytes) -> bytes:
        header = json.loads(data[8 : 8 + header_length(data)])
        edit(header[next(name for name in header if name != "__metadata__")])
        return with_header(data, json.dumps(header).encode())

    return damage


# (damage of the file's bytes, the message fragment expected from the undamaged bytes).
SAFETENSORS_DAMAGE = [
    pytest.param(
        lambda d: d[:-100],
        lambda d: (
            f"truncated safetensors file (header says {tensor_bytes(d)} bytes of tensor data, file holds "
            f"{tensor_bytes(d) - 100})"
        ),
        id="tensor data truncated",
    ),
    pytest.param(
        lambda d: d[: 8 + header_length(d) // 2],
        lambda d: (
            f"truncated or corrupt safetensors file (header length says {header_length(d)} bytes of JSON "
            f"header, file holds {header_length(d) // 2} after it)"
        ),
        id="truncated inside the header",
    ),
    pytest.param(
        lambda d: d[:5],
        lambda d: "truncated safetensors file (5 bytes, shorter than its 8-byte header length)",
        id="truncated inside the header length",
    ),
    pytest.param(
        lambda d: (2**40).to_bytes(8, "little") + d[8:],
        lambda d: f"header length says {2**40} bytes of JSON header, file holds {len(d) - 8} after it",
        id="bad header length, past the end",
    ),
    pytest.param(
        lambda d: (header_length(d) // 2).to_bytes(8, "little") + d[8:],
        lambda d: "safetensors header is not valid JSON",
        id="bad header length, inside the header",
    ),
    pytest.param(
        lambda d: with_header(d, b"\xff" * 16),
        lambda d: "safetensors header is not valid JSON",
        id="header not text",
    ),
    pytest.param(
        lambda d: with_header(d, b"{'tensor': 1}"),
        lambda d: "safetensors header is not valid JSON",
        id="header not JSON",
    ),
    pytest.param(
        lambda d: with_header(d, b"[1, 2]"),
        lambda d: "safetensors header is a JSON list, not an object of tensors",
        id="header not an object",
    ),
    pytest.param(
        edited_header(lambda entry: entry.pop("data_offsets")),
        lambda d: "lacks dtype / shape / data_offsets",
        id="entry without offsets",
    ),
    pytest.param(
        edited_header(lambda entry: entry.update(data_offsets=[-4, 0])),
        lambda d: "has a malformed shape",
        id="negative offsets",
    ),
    pytest.param(
        edited_header(lambda entry: entry.update(shape=[*entry["shape"], 2])),
        lambda d: "bytes, its data_offsets span",
        id="offsets disagree with the shape",
    ),
]


@pytest.fixture
def vae_folder(tmp_path, checkpoint) -> Path:
    """A loadable tiny diffusers vae folder: config.json and one safetensors file."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_VAE))
    save_file(checkpoint, tmp_path / WEIGHTS)
    return tmp_path


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path, fragment: str) -> str:
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert fragment in message, message
    return message


def test_undamaged_folder_loads(vae_folder, checkpoint):
    model = vae.load_vae(vae_folder)
    np.testing.assert_array_equal(model.encoder.conv_in.bias[...], checkpoint["encoder.conv_in.bias"])


@pytest.mark.parametrize(("damage", "fragment"), SAFETENSORS_DAMAGE)
def test_damaged_safetensors_fail_with_one_line_naming_the_file(vae_folder, damage, fragment):
    path = vae_folder / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(damage(data))
    with pytest.raises(ConversionError) as error:
        vae.load_vae(vae_folder)
    message = assert_one_line_naming(error, path, fragment(data))
    assert message.endswith("; re-download or re-convert it"), message


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        pytest.param("config.json", b'{"latent_channels": 4,', "not valid JSON (", id="config truncated"),
        pytest.param("config.json", b"\xff\xfe\x00", "not valid JSON (", id="config not text"),
        pytest.param("config.json", b"[4, 4]", "a JSON list, not an object of settings", id="config a list"),
        pytest.param(
            f"{WEIGHTS}.index.json", b'{"weight_map": {', "not valid JSON (", id="shard index truncated"
        ),
        pytest.param(f"{WEIGHTS}.index.json", b"{}", "no weight_map object", id="shard index without map"),
    ],
)
def test_damaged_json_fails_with_one_line_naming_the_file(vae_folder, name, content, fragment):
    (vae_folder / name).write_bytes(content)
    with pytest.raises(ConversionError) as error:
        vae.load_vae(vae_folder)
    assert_one_line_naming(error, vae_folder / name, fragment)


def test_empty_tensors_read_without_data(tmp_path):
    """A file whose tensors hold no bytes has nothing to memory-map; it still reads."""
    save_file({"empty": np.zeros((0, 3), np.float32)}, tmp_path / "empty.safetensors")
    tensors = conversion.read_safetensors(tmp_path / "empty.safetensors")
    assert tensors["empty"].shape == (0, 3) and tensors["empty"].dtype == np.float32


# ------------------------------------------------------------------------------------------------------------
# The way back (exports): inverting a conversion, writing save_pretrained's file layout.


def shapes_of(tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: array.shape for name, array in tensors.items()}


def test_export_refuses_rules_whose_transform_it_cannot_invert(checkpoint):
    """The VAE's attention kernels are converted by a function (1x1 convolutions of old checkpoints): the
    export names the tensor instead of guessing."""
    state = nnx.state(load(checkpoint))
    with pytest.raises(
        ConversionError, match=r"tiny vae: tensor \S*attentions\.0\.\S* is converted by a transform"
    ):
        conversion.export_tensors(state, shapes_of(checkpoint), vae.CONVERSION_RULES, source="tiny vae")


def test_export_names_a_parameter_that_no_reference_tensor_receives(checkpoint):
    state = nnx.state(load(checkpoint))
    with pytest.raises(ConversionError, match=r"parameter \S*attentions\.0\.\S* is not written"):
        conversion.export_tensors(
            state, shapes_of(checkpoint), vae.CONVERSION_RULES, ignore=[r"attentions"], source="tiny vae"
        )


def test_export_checks_each_shape_against_the_checkpoint(checkpoint):
    state = nnx.state(load(checkpoint))
    shapes = {**shapes_of(checkpoint), "encoder.conv_in.weight": (1, 2, 3, 4)}
    with pytest.raises(ConversionError, match=r"encoder\.conv_in\.weight comes out \(8, 3, 3, 3\)"):
        conversion.export_tensors(state, shapes, vae.CONVERSION_RULES, ignore=[r"attentions"])


@pytest.mark.parametrize("max_shard_bytes", [conversion.MAX_SHARD_BYTES, 2000])
def test_written_safetensors_read_back_as_written(tmp_path, checkpoint, max_shard_bytes):
    """One file, or save_pretrained's shards with their index; either reads back tensor for tensor."""
    files = conversion.write_safetensors(tmp_path, checkpoint, "diffusion_pytorch_model", max_shard_bytes)
    if max_shard_bytes == conversion.MAX_SHARD_BYTES:
        assert [f.name for f in files] == ["diffusion_pytorch_model.safetensors"]
    else:
        assert (
            len(files) > 2
            and files[0].name == f"diffusion_pytorch_model-00001-of-{len(files):05d}.safetensors"
        )
        index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == sum(a.nbytes for a in checkpoint.values())
        assert set(index["weight_map"]) == set(checkpoint)
        shards: dict[str, list[str]] = {}
        for name, file in index["weight_map"].items():
            shards.setdefault(file, []).append(name)
        assert sorted(shards) == [f.name for f in files]
        for names in shards.values():  # within the limit, or a tensor larger than it alone
            assert len(names) == 1 or sum(checkpoint[n].nbytes for n in names) <= max_shard_bytes
    back = conversion.read_weights(tmp_path)
    assert back.keys() == checkpoint.keys()
    for name, array in checkpoint.items():
        np.testing.assert_array_equal(back[name], array)
