"""TensorFlow Lite model metadata, written with the `flatbuffers` package from the published
schema (metadata_schema.fbs, file identifier M001), so that MediaPipe Tasks' ImageClassifier and
ML Kit load model.tflite as it is: the input is an RGB image, its normalization (mean 0, std 1:
the model takes pixel values 0-255 and normalizes inside), the output's labels (labels.txt,
packed with the model).

How a model carries metadata (TFLite's own convention): the Model table's `metadata` vector
names a buffer "TFLITE_METADATA" holding the ModelMetadata flatbuffer, and the associated
files (labels.txt) are a zip archive appended to the model file. A .tflite file is one
flatbuffer whose offsets all point forward, so a new root Model table can be built in front
of the old bytes, pointing into them: the old tables, vectors and weights are kept byte for
byte (shifted by a multiple of 16, so the weights stay aligned), and only the buffers and
metadata vectors are new. Neither mediapipe (its writer fails to import, and its absl-py pin
clashes with Colab's) nor TensorFlow's private schema module is needed.

Field numbers (each table's fields in declaration order; a union takes two, its type first):
ModelMetadata name 0, description 1, version 2, subgraph_metadata 3, author 4, license 5,
associated_files 6, min_parser_version 7. SubGraphMetadata input_tensor_metadata 2,
output_tensor_metadata 3. TensorMetadata name 0, description 1, content 3, process_units 4,
stats 5, associated_files 6. Content content_properties 0-1. ProcessUnit options 0-1.
NormalizationOptions mean 0, std 1. Stats max 0, min 1. AssociatedFile name 0, description 1,
type 2. TFLite's Model: version 0, operator_codes 1, subgraphs 2, description 3, buffers 4,
metadata_buffer 5, metadata 6, signature_defs 7; Buffer data 0; Metadata name 0, buffer 1.
"""

from __future__ import annotations

import io
import struct
import zipfile

METADATA_NAME = "TFLITE_METADATA"
IMAGE_PROPERTIES, FEATURE_PROPERTIES = 2, 1  # ContentProperties union
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union
RGB = 1  # ColorSpaceType
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
MIN_PARSER_VERSION = "1.0.0"  # only fields of the schema's first version are written


def model_metadata(name: str, description: str, labels_file: str, image_size: int, author: str = "trainer") -> bytes:
    """A ModelMetadata flatbuffer for an image classifier: one RGB float input of 0-255 values
    (NormalizationOptions mean 0, std 1), one output of class probabilities labelled by
    `labels_file` (TENSOR_AXIS_LABELS)."""
    w = _Writer()
    input_tensor = _input_tensor(w, image_size)
    output_tensor = _output_tensor(w, labels_file)
    inputs, outputs = w.offsets([input_tensor]), w.offsets([output_tensor])
    subgraph = w.table({2: ("offset", inputs), 3: ("offset", outputs)})
    model_name, model_text, by = w.string(name), w.string(description), w.string(author)
    subgraphs, parser = w.offsets([subgraph]), w.string(MIN_PARSER_VERSION)
    root = w.table({0: ("offset", model_name), 1: ("offset", model_text), 3: ("offset", subgraphs),
                    4: ("offset", by), 7: ("offset", parser)})  # fmt: skip
    w.builder.Finish(root, file_identifier=b"M001")
    return bytes(w.builder.Output())


class _Writer:
    """A flatbuffers.Builder with the few shapes ModelMetadata is made of. A flatbuffer is built
    back to front, so each method returns the offset of what it built, for a later table."""

    def __init__(self, size: int = 1024):
        import flatbuffers

        self.builder = flatbuffers.Builder(size)

    def string(self, text: str) -> int:
        return self.builder.CreateString(text)

    def floats(self, values: list[float]) -> int:
        self.builder.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.builder.PrependFloat32(value)
        return self.builder.EndVector()

    def offsets(self, items: list[int]) -> int:
        self.builder.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.builder.PrependUOffsetTRelative(item)
        return self.builder.EndVector()

    def table(self, fields: dict[int, tuple[str, object]]) -> int:
        """fields: slot -> ("offset" | "uint8" | "uint32", value), values already built."""
        b = self.builder
        b.StartObject(max(fields, default=-1) + 1)
        for slot, (kind, value) in sorted(fields.items(), reverse=True):
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "uint8":
                b.PrependUint8Slot(slot, value, 0)
            else:
                b.PrependUint32Slot(slot, value, 0)
        return b.EndObject()

    def stats(self, top: float, bottom: float) -> int:
        top_at, bottom_at = self.floats([top]), self.floats([bottom])
        return self.table({0: ("offset", top_at), 1: ("offset", bottom_at)})


def _input_tensor(w: _Writer, image_size: int) -> int:
    """The input's TensorMetadata: an RGB image of pixel values 0-255, normalized inside the model."""
    normalization = w.table({0: ("offset", w.floats([0.0])), 1: ("offset", w.floats([1.0]))})
    unit = w.table({0: ("uint8", NORMALIZATION_OPTIONS), 1: ("offset", normalization)})
    image = w.table({0: ("uint8", RGB)})
    content = w.table({0: ("uint8", IMAGE_PROPERTIES), 1: ("offset", image)})
    name, text = (
        w.string("image"),
        w.string(f"RGB pixel values 0-255, resized to {image_size} x {image_size}; the model normalizes them itself"),
    )
    stats, units = w.stats(255.0, 0.0), w.offsets([unit])
    return w.table({0: ("offset", name), 1: ("offset", text), 3: ("offset", content), 4: ("offset", units),
                    5: ("offset", stats)})  # fmt: skip


def _output_tensor(w: _Writer, labels_file: str) -> int:
    """The output's TensorMetadata: softmax probabilities, one per line of `labels_file`."""
    labels = w.table({0: ("offset", w.string(labels_file)), 1: ("offset", w.string("the class names, in output order")),
                      2: ("uint8", TENSOR_AXIS_LABELS)})  # fmt: skip
    feature = w.table({})
    content = w.table({0: ("uint8", FEATURE_PROPERTIES), 1: ("offset", feature)})
    name, text = w.string("probabilities"), w.string("softmax probability of each class")
    stats, files = w.stats(1.0, 0.0), w.offsets([labels])
    return w.table({0: ("offset", name), 1: ("offset", text), 3: ("offset", content), 5: ("offset", stats),
                    6: ("offset", files)})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading a flatbuffer's tables by hand (what attach needs of the old model)


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from("<I", data, at)[0]


def _fields(data: bytes, table: int) -> dict[int, int]:
    """slot -> the absolute position of that field's value in the table at `table`."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    size = struct.unpack_from("<H", data, vtable)[0]
    found = {}
    for slot in range((size - 4) // 2):
        offset = struct.unpack_from("<H", data, vtable + 4 + 2 * slot)[0]
        if offset:
            found[slot] = table + offset
    return found


def _target(data: bytes, at: int) -> int:
    """Where the uoffset stored at `at` points."""
    return at + _u32(data, at)


def _table_vector(data: bytes, vector: int) -> list[int]:
    """The absolute positions of the tables a vector of tables points to."""
    return [_target(data, vector + 4 + 4 * i) for i in range(_u32(data, vector))]


def read_metadata(model: bytes) -> bytes | None:
    """The TFLITE_METADATA buffer of a .tflite file, or None."""
    root = _u32(model, 0)
    fields = _fields(model, root)
    if 6 not in fields or 4 not in fields:
        return None
    buffers = _table_vector(model, _target(model, fields[4]))
    for entry in _table_vector(model, _target(model, fields[6])):
        entry_fields = _fields(model, entry)
        name_at = _target(model, entry_fields[0])
        name = model[name_at + 4 : name_at + 4 + _u32(model, name_at)].decode()
        if name == METADATA_NAME:
            data_fields = _fields(model, buffers[_u32(model, entry_fields[1])])
            vector = _target(model, data_fields[0])
            return model[vector + 4 : vector + 4 + _u32(model, vector)]
    return None


def attach(model: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """The model with `metadata` as its TFLITE_METADATA buffer (replacing one it had) and
    `files` zipped after it."""
    if model[4:8] != b"TFL3":
        raise ValueError("not a TensorFlow Lite flatbuffer (no TFL3 identifier)")
    zipped = _zip_start(model)
    old = model[:zipped] + b"\0" * (-zipped % 16)
    return _with_files(_with_metadata(old, metadata), files)


def _with_metadata(old: bytes, metadata: bytes) -> bytes:
    """A new root Model table in front of the old flatbuffer (kept byte for byte, its length a
    multiple of 16), whose buffers and metadata vectors are the old ones and `metadata`'s."""
    import flatbuffers

    fields = _fields(old, _u32(old, 0))
    buffers = _table_vector(old, _target(old, fields[4])) if 4 in fields else []
    b = flatbuffers.Builder(len(old) + len(metadata) + 4096)
    b.Prep(16, len(old))
    b.head -= len(old)
    b.Bytes[b.head : b.head + len(old)] = old
    base = b.Offset()

    def at(position: int) -> int:  # the builder's offset of a position in the old bytes
        return base - position

    buffer, entry = _metadata_tables(b, metadata, len(buffers))
    vectors = {}
    for slot, (olds, new) in {4: (buffers, buffer), 6: (_other_entries(old, fields), entry)}.items():
        b.StartVector(4, len(olds) + 1, 4)
        b.PrependUOffsetTRelative(new)
        for position in reversed(olds):
            b.PrependUOffsetTRelative(at(position))
        vectors[slot] = b.EndVector()
    b.StartObject(8)
    for slot in (7, 5, 3, 2, 1):
        if slot in fields:
            b.PrependUOffsetTRelativeSlot(slot, at(_target(old, fields[slot])), 0)
    b.PrependUOffsetTRelativeSlot(6, vectors[6], 0)
    b.PrependUOffsetTRelativeSlot(4, vectors[4], 0)
    b.PrependUint32Slot(0, _u32(old, fields[0]) if 0 in fields else 3, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def _other_entries(old: bytes, fields: dict[int, int]) -> list[int]:
    """The Model's metadata entries but TFLITE_METADATA: one written before is replaced, not stacked."""
    kept = []
    for entry in _table_vector(old, _target(old, fields[6])) if 6 in fields else []:
        name_at = _target(old, _fields(old, entry)[0])
        if old[name_at + 4 : name_at + 4 + _u32(old, name_at)].decode() != METADATA_NAME:
            kept.append(entry)
    return kept


def _metadata_tables(b, metadata: bytes, index: int) -> tuple[int, int]:
    """A Buffer holding `metadata` and the Metadata entry "TFLITE_METADATA" that names it, as
    buffer number `index`: (buffer, entry)."""
    b.StartVector(1, len(metadata), 16)  # Buffer.data is force_align 16
    b.head -= len(metadata)
    b.Bytes[b.head : b.head + len(metadata)] = metadata
    data = b.EndVector()
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(0, data, 0)
    buffer = b.EndObject()
    name = b.CreateString(METADATA_NAME)
    b.StartObject(2)
    b.PrependUint32Slot(1, index, 0)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    return buffer, b.EndObject()


def _with_files(flat: bytes, files: dict[str, bytes]) -> bytes:
    """The flatbuffer with `files` as a zip archive after it (TFLite's associated files)."""
    out = io.BytesIO(flat)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for file_name, content in files.items():
            archive.writestr(file_name, content)
    return out.getvalue()


def _zip_start(model: bytes) -> int:
    """Where a zip of associated files appended to the flatbuffer begins (the length when none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            starts = [info.header_offset for info in archive.infolist()]
    except zipfile.BadZipFile:
        return len(model)
    if not starts:
        return len(model)
    # zipfile reports header offsets relative to the archive's own start within the file.
    end = model.rfind(b"PK\x05\x06")
    directory_size, directory_offset = struct.unpack_from("<II", model, end + 12)
    return end - directory_size - directory_offset + min(starts)


def associated_files(model: bytes) -> dict[str, bytes]:
    """The files zipped after a .tflite flatbuffer (labels.txt), by name."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()}
    except zipfile.BadZipFile:
        return {}
