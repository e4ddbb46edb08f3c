"""Seeded mutations of fmonnx's inputs, for benchmarks/fuzz.py.

Each ``make_<target>(rng, case_dir, assets)`` writes one mutated input (and
whatever it refers to) into ``case_dir`` and returns a ``Case``: the fmonnx
command line to run there, the output path it should create, a description
of the mutation, and the marker file that must never appear (a mutation that
smuggles code or a ``..`` path tries to create it). Everything is decided by
``rng``, so a seed and a case number give the same bytes again.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

__all__ = ["Case", "MAKERS", "marker_name"]

HUGE_DIMS = (0, -1, -7, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**40, 2**62, 10**6, 65535)
BAD_DTYPES = (0, 2, 3, 6, 7, 8, 9, 10, 11, 14, 16, 999)  # UNDEFINED, UINT8, INT8, INT32, INT64, STRING, BOOL, ...
LAYERS_KEY = "fmonnx.layers"
SOURCE_KEY = "fmonnx.source"


@dataclass
class Case:
    target: str
    mutation: str
    argv: list[str]
    out: str | None = None  # relative to the case folder; must not exist after a failure
    marker: str | None = None  # absolute path that must not exist afterwards
    heavy: bool = False  # loads TensorFlow or torch: a long timeout
    inputs: list[str] = field(default_factory=list)  # files that must be unchanged afterwards


def marker_name(case_dir: Path) -> str:
    return f"fmonnx-fuzz-marker-{case_dir.name}"


# ---------------------------------------------------------------- generic byte and JSON mutations


def mutate_bytes(rng: Random, data: bytes) -> tuple[bytes, str]:
    data = bytearray(data)
    kind = rng.choice(["bitflip", "bitflip", "bytes", "truncate", "insert", "delete", "splice"])
    if kind == "bitflip":
        count = rng.randint(1, 16)
        for _ in range(count):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
        return bytes(data), f"{count} bit flips"
    if kind == "bytes":
        count = rng.randint(1, 8)
        for _ in range(count):
            data[rng.randrange(len(data))] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        return bytes(data), f"{count} bytes set"
    position = rng.randrange(len(data))
    if kind == "truncate":
        return bytes(data[:position]), f"truncated at {position} of {len(data)}"
    if kind == "insert":
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        return bytes(data[:position] + chunk + data[position:]), f"{len(chunk)} bytes inserted at {position}"
    if kind == "delete":
        length = rng.randint(1, 256)
        return bytes(data[:position] + data[position + length:]), f"{length} bytes deleted at {position}"
    length = rng.randint(1, 512)
    return bytes(data[:position] + data[position:position + length] * 2 + data[position + length:]), (
        f"{length} bytes at {position} doubled"
    )


def random_json(rng: Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "null", "list", "dict"] if depth < 3 else ["str", "int", "null", "bool"]
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "x", "conv2d", "../../etc/passwd", "\u00e9\u4e2d", "a" * 2000, "\x00", "{}", "null"])
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, -(2**70), 10**30])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e308, float("nan"), float("inf")])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["layer", "output", "inner", "class", "name", "also_output_of", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def json_text(rng: Random, value) -> str:
    """``value`` as JSON, or something that is almost JSON."""
    choice = rng.random()
    if choice < 0.1:
        return deep_json(rng.choice([1000, 100000]))
    if choice < 0.18:
        return rng.choice(["{", "not json", "", "\ud800", "[1, 2,]", "NaN", "1e999999"])
    return json.dumps(value)


# ---------------------------------------------------------------- models (ONNX)


def _structured_model(rng: Random, model) -> str:
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    kind = rng.choice(["dims", "dims", "dtype", "metadata", "metadata", "metadata", "attribute", "attribute",
                       "initializer", "outputs", "inputs", "nodes", "opset", "external", "value_info"])
    if kind in ("dims", "value_info"):
        values = list(graph.input) + list(graph.output) if kind == "dims" else list(graph.value_info) or list(
            graph.output)
        value = rng.choice(values)
        dims = value.type.tensor_type.shape.dim
        action = rng.choice(["set", "set", "set", "param", "drop", "add", "clear_shape"])
        if action == "set" and len(dims):
            index = rng.randrange(len(dims))
            number = rng.choice(HUGE_DIMS)
            dims[index].Clear()
            dims[index].dim_value = number
            return f"{value.name} dim {index} = {number}"
        if action == "param" and len(dims):
            index = rng.randrange(len(dims))
            name = rng.choice(["", "n", "h" * 500, "1"])
            dims[index].Clear()
            dims[index].dim_param = name
            return f"{value.name} dim {index} = param {name[:20]!r}"
        if action == "drop" and len(dims):
            index = rng.randrange(len(dims))
            del dims[index]
            return f"{value.name} dim {index} removed"
        if action == "add":
            for _ in range(rng.randint(1, 3)):
                dims.add().dim_value = rng.choice([1, 2, 0, 3])
            return f"{value.name} rank raised to {len(dims)}"
        value.type.tensor_type.ClearField("shape")
        return f"{value.name} shape removed"
    if kind == "dtype":
        value = rng.choice(list(graph.input) + list(graph.output))
        dtype = rng.choice(BAD_DTYPES)
        value.type.tensor_type.elem_type = dtype
        return f"{value.name} dtype = {dtype}"
    if kind == "metadata":
        key = rng.choice([LAYERS_KEY, SOURCE_KEY])
        outputs = [o for node in graph.node for o in node.output] or ["output"]  # an earlier mutation may empty it
        style = rng.choice(["random", "records", "records"])
        if style == "random":
            value = random_json(rng)
        else:
            value = []
            for _ in range(rng.randint(1, 4)):
                record = {"layer": rng.choice(outputs), "output": rng.choice(outputs)}
                field_name = rng.choice(["layer", "output", "inner", "also_output_of", "class"])
                record[field_name] = random_json(rng)
                value.append(record)
            if key == SOURCE_KEY:
                value = {"framework": random_json(rng), "file": random_json(rng), "example_input": random_json(rng),
                         "spatial": random_json(rng), "opset": random_json(rng)}
        text = json_text(rng, value)
        kept = [p for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        # protobuf takes no lone surrogates: such a text goes in escaped, still not what the schema wants
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        model.metadata_props.add(key=key, value=text)
        return f"metadata {key} = {text[:80]!r}"
    if kind == "attribute":
        nodes = [n for n in graph.node if len(n.attribute)] or list(graph.node)
        node = rng.choice(nodes)
        action = rng.choice(["ints", "ints", "int", "type", "drop", "add"]) if len(node.attribute) else "add"
        if action == "add":
            name = rng.choice(["kernel_shape", "strides", "pads", "dilations", "group", "perm", "axis", "bogus"])
            node.attribute.append(helper.make_attribute(name, rng.choice([[0, 0], [-1], [2**40, 1], 0, 3])))
            return f"node {node.name} ({node.op_type}) attribute {name} added"
        attribute = rng.choice(list(node.attribute))
        if action == "drop":
            node.attribute.remove(attribute)
            return f"node {node.name} ({node.op_type}) attribute {attribute.name} removed"
        if action == "type":
            replacement = helper.make_attribute(attribute.name, rng.choice([1.5, "x", [1.0, 2.0], b"\x00"]))
            node.attribute.remove(attribute)
            node.attribute.append(replacement)
            return f"node {node.name} ({node.op_type}) attribute {attribute.name} type -> {replacement.type}"
        if attribute.ints:
            values = [rng.choice([0, -1, -3, 1, 2, 5, 2**31, 2**62]) for _ in range(rng.randint(0, 6))]
            del attribute.ints[:]
            attribute.ints.extend(values)
            return f"node {node.name} ({node.op_type}) {attribute.name} = {values}"
        number = rng.choice([0, -1, 2**31, 2**62, 7])
        attribute.i = number
        return f"node {node.name} ({node.op_type}) {attribute.name}.i = {number}"
    if kind == "initializer" and len(graph.initializer):
        tensor = rng.choice(list(graph.initializer))
        action = rng.choice(["truncate", "truncate", "empty", "dims", "dtype"])
        if action in ("truncate", "empty"):
            if not tensor.raw_data:
                array = onnx.numpy_helper.to_array(tensor)
                tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
            length = 0 if action == "empty" else rng.randrange(len(tensor.raw_data))
            tensor.raw_data = tensor.raw_data[:length]
            return f"initializer {tensor.name} raw_data cut to {length} bytes"
        if action == "dims" and len(tensor.dims):
            index = rng.randrange(len(tensor.dims))
            tensor.dims[index] = rng.choice([0, 1, 2**31, tensor.dims[index] + 1])
            return f"initializer {tensor.name} dims = {list(tensor.dims)}"
        tensor.data_type = rng.choice(BAD_DTYPES)
        return f"initializer {tensor.name} dtype = {tensor.data_type}"
    if kind == "outputs":
        if rng.random() < 0.5:
            del graph.output[:]
            return "every graph output removed"
        output = helper.make_tensor_value_info(rng.choice(["missing", graph.input[0].name]), TensorProto.FLOAT, None)
        graph.output.append(output)
        return f"graph output {output.name} added"
    if kind == "inputs":
        action = rng.choice(["remove", "duplicate", "initializer_name"])
        if action == "remove":
            del graph.input[:]
            return "every graph input removed"
        if action == "duplicate":
            graph.input.append(copy.deepcopy(graph.input[0]))
            return "graph input duplicated"
        if len(graph.initializer):
            graph.input[0].name = graph.initializer[0].name
            return "graph input renamed to an initializer's name"
        return "nothing"
    if kind == "nodes":
        action = rng.choice(["remove", "remove", "cycle", "all"])
        if action == "all":
            del graph.node[:]
            return "every node removed"
        index = rng.randrange(len(graph.node))
        node = graph.node[index]
        if action == "cycle" and len(node.input):
            node.input[0] = node.output[0]
            return f"node {node.name} reads its own output"
        del graph.node[index]
        return f"node {node.name} ({node.op_type}) removed"
    if kind == "opset":
        version = rng.choice([1, 6, 99, 10**9])
        model.opset_import[0].version = version
        if rng.random() < 0.3:
            model.ir_version = rng.choice([0, 3, 99])
        return f"opset {version}, ir {model.ir_version}"
    if len(graph.initializer):
        tensor = rng.choice(list(graph.initializer))
        location = rng.choice(["../../../../../../etc/passwd", "/etc/hostname", "missing.bin", "/dev/zero", ""])
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        tensor.external_data.add(key="location", value=location)
        if rng.random() < 0.5:
            tensor.external_data.add(key="length", value=str(rng.choice([2**40, 16, -1])))
        return f"initializer {tensor.name} external data at {location!r}"
    return "unchanged"


def make_models(rng: Random, case_dir: Path, assets: dict) -> Case:
    import onnx

    base_name = rng.choice(["tutorial_cnn.onnx", "torch_cnn.onnx"])
    data = Path(assets[base_name]).read_bytes()
    if rng.random() < 0.4:
        data, what = mutate_bytes(rng, data)
    else:
        model = onnx.load_from_string(data)
        try:
            what = _structured_model(rng, model)
        except IndexError:  # the mutation drawn has nothing to pick from in this model: mutate its bytes
            data, what = mutate_bytes(rng, data)
            (case_dir / "model.onnx").write_bytes(data)
            return _model_case(rng, case_dir, assets, base_name, what)
        if rng.random() < 0.25:
            second = model.__deepcopy__()
            try:  # the first mutation may have emptied what the second picks from: then it is left out
                what += "; " + _structured_model(rng, second)
                model = second
            except (IndexError, UnicodeError):
                pass
        data = model.SerializeToString()
    (case_dir / "model.onnx").write_bytes(data)
    return _model_case(rng, case_dir, assets, base_name, what)


def _model_case(rng: Random, case_dir: Path, assets: dict, base_name: str, what: str) -> Case:
    (case_dir / "photo.jpg").write_bytes(Path(assets["small_photo"]).read_bytes())
    command = rng.choice(["layers", "layers", "render", "render", "render", "stats", "scan"])
    argv, out = _model_command(command, "model.onnx", "photo.jpg")
    return Case("models", f"{base_name}: {what}", argv, out, inputs=["model.onnx", "photo.jpg"])


def _model_command(command: str, model: str, image: str) -> tuple[list[str], str | None]:
    if command == "layers":
        return ["layers", model], None
    if command == "stats":
        return ["stats", model, image], None
    if command == "scan":
        return ["scan", model, image, "-o", "out", "--top", "2"], "out"
    return ["render", model, image, "-o", "out"], "out"


# ---------------------------------------------------------------- images


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int, color: int, rows: bytes | None = None,
              declared: tuple[int, int] | None = None) -> bytes:
    """A PNG written by hand, so that bit depths and header sizes PIL will not write can be made."""
    if rows is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
        row_bytes = (width * channels * depth + 7) // 8
        rows = b"".join(b"\x00" + bytes((x * 37 + y * 11) % 256 for x in range(row_bytes)) for y in range(height))
    declared_width, declared_height = declared or (width, height)
    header = struct.pack(">IIBBBBB", declared_width, declared_height, depth, color, 0, 0, 0)
    chunks = _chunk(b"IHDR", header)
    if color == 3:
        chunks += _chunk(b"PLTE", bytes(range(256)) * 3)
    return b"\x89PNG\r\n\x1a\n" + chunks + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def _base_array(rng: Random, height: int, width: int):
    import numpy as np

    generator = np.random.default_rng(rng.randrange(2**32))
    rows, cols = np.mgrid[0:height, 0:width]
    base = np.stack([rows * 255 // max(height, 1), cols * 255 // max(width, 1), (rows + cols) % 256], -1)
    return ((base + generator.integers(0, 40, base.shape)) % 256).astype(np.uint8)


def _pil_image(rng: Random) -> tuple[bytes, str, str]:
    import numpy as np
    from PIL import Image

    height, width = rng.choice([(1, 1), (1, 37), (37, 1), (2, 2), (40, 48), (64, 64), (3, 900), (151, 149)])
    rgb = Image.fromarray(_base_array(rng, height, width))
    mode = rng.choice(["RGB", "L", "LA", "RGBA", "P", "PA", "1", "I;16", "I", "F", "CMYK", "YCbCr", "LAB", "HSV"])
    try:
        image = rgb.convert(mode) if mode not in ("I;16", "LAB", "HSV") else rgb.convert("L").convert("I")
        if mode == "I;16":
            image = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257), "I;16")
        elif mode in ("LAB", "HSV"):
            image = rgb.convert(mode) if mode == "HSV" else Image.merge("LAB", rgb.split())
    except (ValueError, OSError):
        image = rgb
    formats = {"RGB": ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "ICO"],
               "CMYK": ["JPEG", "TIFF"], "YCbCr": ["JPEG", "TIFF"], "LAB": ["TIFF"], "HSV": ["TIFF"],
               "F": ["TIFF"], "I": ["PNG", "TIFF"], "I;16": ["PNG", "TIFF"], "PA": ["PNG"]}
    fmt = rng.choice(formats.get(mode, ["PNG", "TIFF", "GIF", "WEBP", "BMP"]))
    buffer = io.BytesIO()
    save_args = {}
    if fmt == "JPEG" and rng.random() < 0.5:
        orientation = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 255, 65535])
        exif = Image.Exif()
        exif[0x0112] = orientation
        save_args["exif"] = exif.tobytes()
        mode += f" exif orientation {orientation}"
    try:
        image.save(buffer, fmt, **save_args)
    except (OSError, ValueError, KeyError):
        buffer = io.BytesIO()
        rgb.save(buffer, "PNG")
        fmt, mode = "PNG", "RGB (fallback)"
    if rng.random() < 0.15:
        # Several frames: an animated GIF or a multi-page TIFF.
        fmt = rng.choice(["GIF", "TIFF"])
        buffer = io.BytesIO()
        frames = [rgb.rotate(angle) for angle in (0, 90, 180)]
        frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:])
        mode = f"{len(frames)} frames"
    suffix = {"JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "PPM": ".ppm", "ICO": ".ico"}.get(fmt, "." + fmt.lower())
    return buffer.getvalue(), suffix, f"{fmt} {mode} {width}x{height}"


def make_image_bytes(rng: Random) -> tuple[bytes, str, str]:
    """One mutated image: (bytes, suffix, description)."""
    kind = rng.choice(["mode", "mode", "mode", "png", "huge", "truncate", "magic", "flip", "empty", "jpeg_sof",
                       "text"])
    if kind == "png":
        depth, color = rng.choice([(16, 2), (16, 6), (16, 0), (1, 0), (2, 0), (4, 0), (8, 3), (4, 3), (16, 4)])
        width, height = rng.choice([(1, 1), (5, 3), (33, 17)])
        return png_bytes(width, height, depth, color), ".png", f"PNG depth {depth} color {color} {width}x{height}"
    if kind == "huge":
        declared = rng.choice([(2**31 - 1, 2**31 - 1), (65535, 65535), (100000, 1), (1, 100000), (0, 0), (0, 5),
                               (30000, 30000), (2**32 - 1, 1)])
        return png_bytes(4, 4, 8, 2, declared=declared), ".png", f"PNG 4x4 declaring {declared[0]}x{declared[1]}"
    if kind == "jpeg_sof":
        data, _, what = _pil_image_of_format(rng, "JPEG")
        data = bytearray(data)
        sof = data.find(b"\xff\xc0")
        size = rng.choice([(65535, 65535), (0, 0), (1, 65535), (40000, 40000)])
        if sof >= 0:
            data[sof + 5:sof + 9] = struct.pack(">HH", *size)
        return bytes(data), ".jpg", f"{what} SOF declaring {size[1]}x{size[0]}"
    if kind == "empty":
        return b"", rng.choice([".png", ".jpg"]), "empty file"
    if kind == "text":
        return rng.choice([b"hello", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM" + b"\xff" * 60,
                           b"II*\x00" + b"\xff" * 20]), rng.choice([".png", ".jpg", ".gif", ".bmp", ".tif"]), (
            "a few bytes of magic")
    data, suffix, what = _pil_image(rng)
    if kind == "truncate":
        cut = rng.randrange(max(len(data), 1))
        return data[:cut], suffix, f"{what} truncated at {cut} of {len(data)}"
    if kind == "magic":
        replacement = rng.choice([b"\x00\x00\x00\x00", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF8", b"RIFF"])
        return replacement + data[len(replacement):], suffix, f"{what} with magic {replacement!r}"
    if kind == "flip":
        data, how = mutate_bytes(rng, data)
        return data, suffix, f"{what}, {how}"
    if rng.random() < 0.1:
        suffix = rng.choice([".png", ".jpg", ".txt", ""])
        what += f" named {suffix or 'without suffix'}"
    return data, suffix, what


def _pil_image_of_format(rng: Random, fmt: str) -> tuple[bytes, str, str]:
    from PIL import Image

    height, width = rng.choice([(8, 8), (40, 48)])
    buffer = io.BytesIO()
    Image.fromarray(_base_array(rng, height, width)).save(buffer, fmt)
    return buffer.getvalue(), ".jpg", f"{fmt} RGB {width}x{height}"


def make_images(rng: Random, case_dir: Path, assets: dict) -> Case:
    model = rng.choice(["tutorial_cnn.onnx", "torch_cnn.onnx"])
    (case_dir / model).write_bytes(Path(assets[model]).read_bytes())
    inputs = [model]
    if rng.random() < 0.05:
        name = rng.choice(["folder.png", "missing.jpg"])
        if name == "folder.png":
            (case_dir / name).mkdir()
        what = f"image path is {name}"
    else:
        data, suffix, what = make_image_bytes(rng)
        name = "image" + suffix
        (case_dir / name).write_bytes(data)
        inputs.append(name)
    command = rng.choice(["render", "render", "render", "stats", "scan"])
    argv, out = _model_command(command, model, name)
    return Case("images", f"{model}: {what}", argv, out, inputs=inputs)


# ---------------------------------------------------------------- lists (fmonnx scan) and Parquet


def _write_images(rng: Random, case_dir: Path, assets: dict) -> list[str]:
    folder = case_dir / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(Path(assets["small_photo"]).read_bytes())
    (folder / "sub" / "b.png").write_bytes(png_bytes(20, 12, 8, 2))
    (folder / "\u00e9t\u00e9 c.png").write_bytes(png_bytes(9, 9, 8, 0))
    data, suffix, _ = make_image_bytes(rng)
    (folder / ("odd" + suffix)).write_bytes(data)
    return ["imgs/a.jpg", "imgs/sub/b.png", "imgs/\u00e9t\u00e9 c.png", "imgs/odd" + suffix]


def make_lists(rng: Random, case_dir: Path, assets: dict) -> Case:
    (case_dir / "model.onnx").write_bytes(Path(assets["tutorial_cnn.onnx"]).read_bytes())
    images = _write_images(rng, case_dir, assets)
    if assets.get("pyarrow") and rng.random() < 0.35:
        name, what = _parquet(rng, case_dir, images)
    else:
        name, what = _list_file(rng, case_dir, images, assets["small_photo"])
    argv = ["scan", "model.onnx", name, "-o", "out", "--top", "2"]
    return Case("lists", what, argv, "out", inputs=["model.onnx", name] if (case_dir / name).is_file() else [])


def _list_file(rng: Random, case_dir: Path, images: list[str], absolute: str) -> tuple[str, str]:
    entries = [rng.choice(images) for _ in range(rng.randint(0, 4))]
    extras = []
    for _ in range(rng.randint(1, 3)):
        extra = rng.choice([
            "", "   ", "\t", "# comment", "missing.jpg", "imgs", "imgs/sub", "imgs/sub/", ".", "..", "/",
            "x" * rng.choice([300, 5000, 300000]), "imgs/a.jpg\x00.png", "/dev/null", "/etc/hostname",
            absolute, "../" * 20 + "etc/hostname", "list.lst", "list.txt", "data.parquet",
            "imgs/a.jpg,extra", '"imgs/a.jpg"', " imgs/a.jpg ", "imgs/A.JPG", "~/x.jpg", "$HOME/x.jpg",
            "imgs/\u00e9t\u00e9 c.png",
        ])
        extras.append(extra)
    lines = entries + extras
    rng.shuffle(lines)
    suffix = rng.choice([".lst", ".txt", ".csv"])
    name = "list" + suffix
    newline = rng.choice(["\n", "\r\n", "\r", "\n\n"])
    text = newline.join(lines) + rng.choice(["", newline])
    encoding = rng.choice(["utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "garbage"])
    if encoding == "garbage":
        data = text.encode("utf-8", "surrogatepass") + bytes([0xFF, 0xFE, 0xC3, 0x28, 0x80])
    else:
        data = text.encode(encoding, "replace")
    (case_dir / name).write_bytes(data)
    shown = [line[:30] for line in lines]
    return name, f"{name} {encoding} newline={newline!r} lines={shown}"


def _parquet(rng: Random, case_dir: Path, images: list[str]) -> tuple[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [(case_dir / image).read_bytes() for image in images]
    rows = rng.randint(0, 4)
    kind = rng.choice(["bytes_nulls", "struct_nulls", "paths", "wrong_type", "no_column", "large_binary",
                       "struct_string_bytes", "path_int", "list_binary", "dictionary", "truncated", "flipped"])
    pick = [rng.choice(blobs + [None, b"", b"garbage"]) for _ in range(rows)]
    if kind in ("bytes_nulls", "truncated", "flipped"):
        table = pa.table({"image": pa.array(pick, pa.binary())})
    elif kind == "large_binary":
        table = pa.table({"image": pa.array(pick, pa.large_binary())})
    elif kind == "struct_nulls":
        values = [None if rng.random() < 0.3 else {"bytes": value, "path": rng.choice([None, "x.jpg"])}
                  for value in pick]
        table = pa.table({"image": pa.array(values, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    elif kind == "struct_string_bytes":
        values = [{"bytes": rng.choice([None, "not bytes"])} for _ in range(rows)]
        table = pa.table({"image": pa.array(values, pa.struct([("bytes", pa.string())]))})
    elif kind == "paths":
        values = [rng.choice(images + [None, "missing.jpg", "imgs", "", "/dev/null", "x" * 5000]) for _ in range(rows)]
        table = pa.table({rng.choice(["path", "PATH", "file", "image_path"]): pa.array(values, pa.string())})
    elif kind == "dictionary":
        values = [rng.choice(images + [None]) for _ in range(rows)]
        table = pa.table({"path": pa.array(values, pa.string()).dictionary_encode()})
    elif kind == "path_int":
        table = pa.table({"path": pa.array(list(range(rows)), pa.int64())})
    elif kind == "list_binary":
        table = pa.table({"image": pa.array([[value] for value in pick], pa.list_(pa.binary()))})
    elif kind == "wrong_type":
        table = pa.table({"image": pa.array([rng.random() for _ in range(rows)], pa.float64())})
    else:
        table = pa.table({"label": pa.array(list(range(rows)), pa.int32())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    data = buffer.getvalue()
    what = f"data.parquet {kind} rows={rows} schema={table.schema.to_string(show_schema_metadata=False)!r}"
    if kind == "truncated":
        data = data[:rng.randrange(len(data))]
    elif kind == "flipped":
        data, how = mutate_bytes(rng, data)
        what += f", {how}"
    (case_dir / "data.parquet").write_bytes(data)
    return "data.parquet", what


# ---------------------------------------------------------------- .keras zips


def _json_locations(value, path=()):
    """Every (container, key) in a JSON tree, for replacing or inserting at random."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield value, key, path + (key,)
            yield from _json_locations(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield value, index, path + (index,)
            yield from _json_locations(child, path + (index,))


def _mutate_keras_config(rng: Random, config: dict, lambda_layer: dict) -> str:
    body = config.setdefault("config", {}) if isinstance(config.get("config"), dict) else config
    layers = body.get("layers") if isinstance(body.get("layers"), list) else []
    kind = rng.choice(["layers_type", "lambda", "lambda", "lambda", "missing", "missing", "wrong_type",
                       "class_type"])
    if kind == "layers_type":
        value = rng.choice(["abc", 5, {"a": 1}, None, [1, "x", None], [{"config": {}}], True, 1.5])
        body["layers"] = value
        return f"layers = {json.dumps(value)[:60]}"
    if kind == "class_type" and layers:
        layer = rng.choice(layers)
        value = rng.choice([["Conv2D"], 5, None, {"x": 1}, "", "lambda", "LAMBDA", "keras.layers.Lambda"])
        layer["class_name"] = value
        return f"a layer's class_name = {json.dumps(value)}"
    if kind == "lambda":
        payload = copy.deepcopy(lambda_layer)
        where = rng.choice(["layers", "nested_model", "wrapper", "any_key", "any_key", "registered"])
        if where == "layers" and layers:
            layers.insert(rng.randrange(len(layers) + 1), payload)
        elif where == "nested_model" and layers:
            layers.insert(1, {"module": "keras", "class_name": "Sequential", "registered_name": None,
                              "config": {"name": "inner", "layers": [payload]}})
        elif where == "wrapper" and layers:
            layers.insert(1, {"module": "keras.layers", "class_name": "TimeDistributed", "registered_name": None,
                              "config": {"name": "wrap", "layer": payload}})
        elif where == "registered":
            payload["class_name"] = rng.choice(["Custom>Lambda", "lambda", "Lambda "])
            payload["registered_name"] = "Lambda"
            layers.insert(0, payload) if layers else body.update(layers=[payload])
        else:
            locations = [(container, key) for container, key, _ in _json_locations(config)
                         if isinstance(container, dict)]
            container, key = rng.choice(locations)
            target = container[key] if isinstance(container[key], dict) else container
            new_key = rng.choice(["layer", "forward_layer", "backward_layer", "function", "activation", "extra",
                                  "config", "build_config", "kernel_initializer"])
            target[new_key] = payload
            where = f"key {new_key!r} under {key!r}"
        return f"Lambda at {where}"
    locations = list(_json_locations(config))
    container, key, path = rng.choice(locations)
    if kind == "missing":
        wanted = [item for item in locations if item[1] in ("config", "class_name", "layers", "name", "module",
                                                            "build_config", "registered_name", "inbound_nodes",
                                                            "batch_shape", "filters", "kernel_size")]
        container, key, path = rng.choice(wanted or locations)
        del container[key]
        return f"removed {'/'.join(map(str, path))}"
    value = random_json(rng)
    container[key] = value
    return f"{'/'.join(map(str, path))} = {json.dumps(value)[:60]}"


def _zip_with(entries: list[tuple[str, bytes]], compression: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # duplicate names are the point
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def _set_method(data: bytes, method: int) -> bytes:
    """Rewrite the compression method of every entry, local and central headers both."""
    data = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (found := data.find(signature, start)) >= 0:
            data[found + offset:found + offset + 2] = struct.pack("<H", method)
            start = found + 4
    return bytes(data)


def _set_flag(data: bytes, bit: int) -> bytes:
    data = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (found := data.find(signature, start)) >= 0:
            flags = struct.unpack("<H", data[found + offset:found + offset + 2])[0] | (1 << bit)
            data[found + offset:found + offset + 2] = struct.pack("<H", flags)
            start = found + 4
    return bytes(data)


def _escape_name(case_dir: Path) -> str:
    return "../" * 12 + "tmp/" + marker_name(case_dir)


def make_keras_zips(rng: Random, case_dir: Path, assets: dict) -> Case:
    with zipfile.ZipFile(assets["base.keras"]) as archive:
        entries = [(name, archive.read(name)) for name in archive.namelist()]
    lambda_layer = json.loads(Path(assets["lambda_layer.json"]).read_text())
    what = []
    level = rng.choice(["config", "config", "config", "metadata", "zip"])
    if level == "config":
        index = [name for name, _ in entries].index("config.json")
        config = json.loads(entries[index][1])
        what.append(_mutate_keras_config(rng, config, lambda_layer))
        text = json_text(rng, config) if rng.random() < 0.15 else json.dumps(config)
        data = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.08:
            data = text.encode("utf-16")
            what.append("config.json in UTF-16")
        entries[index] = ("config.json", data)
        if "Lambda" in what[0] and rng.random() < 0.4:
            # Keras 2 (tf_keras) files are loaded by another loader.
            entries = [(n, json.dumps({"keras_version": "2.15.0"}).encode() if n == "metadata.json" else d)
                       for n, d in entries]
            what.append("metadata says Keras 2.15.0")
    elif level == "metadata":
        value = rng.choice([3, ["3.1"], None, "abc", "99.0", "", {"v": 3}, "3" * 5000])
        entries = [(n, json_text(rng, {"keras_version": value}).encode() if n == "metadata.json" else d)
                   for n, d in entries]
        what.append(f"metadata keras_version = {json.dumps(value)[:40]}")
    compression = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
    zip_kind = rng.choice(["plain", "plain", "method", "duplicate", "truncate", "encrypted", "drop", "escape",
                           "case"]) if level == "zip" else "plain"
    if zip_kind == "duplicate":
        name = rng.choice(["config.json", "metadata.json", "model.weights.h5"])
        index = [n for n, _ in entries].index(name)
        payload = copy.deepcopy(json.loads(entries[[n for n, _ in entries].index("config.json")][1]))
        body = payload.get("config", {})
        body.get("layers", []).insert(1, copy.deepcopy(lambda_layer))
        extra = json.dumps(payload).encode() if name == "config.json" else b"garbage"
        position = rng.choice([index, index + 1])
        entries.insert(position, (name, extra))
        what.append(f"{name} twice ({'first' if position == index else 'second'} one altered)")
    elif zip_kind == "drop":
        name = rng.choice(["config.json", "metadata.json", "model.weights.h5"])
        entries = [(n, d) for n, d in entries if n != name]
        what.append(f"{name} left out")
    elif zip_kind == "escape":
        entries.append((rng.choice([_escape_name(case_dir), "/tmp/" + marker_name(case_dir)]), b"x"))
        what.append("an entry named with ../ or an absolute path")
    elif zip_kind == "case":
        entries = [(n.upper() if n == "config.json" else n, d) for n, d in entries]
        entries.append(("Config.json", b"{}"))
        what.append("config.json as CONFIG.JSON, plus Config.json")
    data = _zip_with(entries, compression)
    what.append(f"compression {compression}")
    if zip_kind == "method":
        method = rng.choice([1, 6, 9, 97, 98, 99, 19, 95, 65535])
        data = _set_method(data, method)
        what.append(f"method id {method}")
    elif zip_kind == "encrypted":
        data = _set_flag(data, 0)
        what.append("encrypted flag set")
    elif zip_kind == "truncate":
        cut = rng.randrange(len(data))
        data = data[:cut]
        what.append(f"truncated at {cut} of {len(data)}")
    (case_dir / "model.keras").write_bytes(data)
    argv = ["convert", "model.keras", "-o", "model.onnx"]
    return Case("keras_zips", "; ".join(what), argv, "model.onnx", marker=f"/tmp/{marker_name(case_dir)}",
                heavy=True, inputs=["model.keras"])


# ---------------------------------------------------------------- .pt2


class _Touch:
    """Unpickling this creates the marker file: code stored in a file would have run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def make_pt2(rng: Random, case_dir: Path, assets: dict) -> Case:
    marker = f"/tmp/{marker_name(case_dir)}"
    with zipfile.ZipFile(assets["base.pt2"]) as archive:
        entries = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    names = [name for name, _ in entries]
    prefix = names[0].split("/", 1)[0]
    evil = pickle.dumps(_Touch(marker), protocol=2)
    kind = rng.choice(["duplicate", "duplicate", "case", "case", "dotdot", "dotdot", "json", "bytes"])
    if kind == "duplicate":
        name = rng.choice(names)
        payload = rng.choice([evil, b"garbage", entries[rng.randrange(len(entries))][1]])
        entries.insert(rng.choice([names.index(name), names.index(name) + 1]), (name, payload))
        what = f"{name} twice"
    elif kind == "case":
        choice = rng.choice([f"{prefix}/DATA/weights/model.pt", f"{prefix}/data/AOTInductor/model.so",
                             f"{prefix.upper()}/serialized_exported_program.pt", f"{prefix}/Data/Weights/model.pt",
                             rng.choice(names).upper()])
        entries.append((choice, evil))
        what = f"pickle entry {choice}"
    elif kind == "dotdot":
        choice = rng.choice([_escape_name(case_dir), f"/tmp/{marker_name(case_dir)}",
                             f"{prefix}/data/../data/weights/model.pt", f"{prefix}/x/../serialized_exported_program.pt",
                             f"{prefix}\\..\\..\\{marker_name(case_dir)}", f"{prefix}/./data/weights/model.pt"])
        entries.append((choice, evil))
        what = f"entry {choice}"
    elif kind == "json":
        candidates = [i for i, (n, _) in enumerate(entries) if n.endswith(".json")]
        index = rng.choice(candidates)
        try:
            value = json.loads(entries[index][1])
            locations = list(_json_locations(value))
            container, key, path = rng.choice(locations)
            container[key] = random_json(rng)
            data = json_text(rng, value).encode("utf-8", "surrogatepass")
            what = f"{entries[index][0]}: {'/'.join(map(str, path))[:80]} replaced"
        except (ValueError, IndexError):
            data, what = b"{", f"{entries[index][0]} = '{{'"
        entries[index] = (entries[index][0], data)
    else:
        data = _zip_with(entries, zipfile.ZIP_STORED)
        data, how = mutate_bytes(rng, data)
        (case_dir / "model.pt2").write_bytes(data)
        return _pt2_case(rng, f"archive {how}", marker)
    (case_dir / "model.pt2").write_bytes(_zip_with(entries, zipfile.ZIP_STORED))
    return _pt2_case(rng, what, marker)


def _pt2_case(rng: Random, what: str, marker: str) -> Case:
    if rng.random() < 0.5:
        return Case("pt2", what, ["layers", "model.pt2"], None, marker=marker, heavy=True, inputs=["model.pt2"])
    return Case("pt2", what, ["convert", "model.pt2", "-o", "model.onnx"], "model.onnx", marker=marker, heavy=True,
                inputs=["model.pt2"])


MAKERS = {
    "models": make_models,
    "images": make_images,
    "lists": make_lists,
    "keras_zips": make_keras_zips,
    "pt2": make_pt2,
}

