"""Load a Keras model file with the Keras that can read it (Keras 3 or tf_keras).

TensorFlow, Keras and tf_keras are imported here, lazily, and only here and
in the other ``keras_*`` modules. The file must have passed
``keras_file.read_keras_file`` and the Lambda check first.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from types import ModuleType

from fmonnx.errors import ConversionError, MissingDependencyError, ModelError
from fmonnx.sources.keras.file import KerasFile, layer_configs

__all__ = ["import_tensorflow", "import_keras", "load_keras_model", "LOADERS"]

logger = logging.getLogger(__name__)

LOADERS = ("keras3", "tf_keras")
INSTALL_HINT = "run: pip install -e '.[keras]'"
# The function that converts a model already loaded in Python (custom classes, files Keras cannot read).
IN_MEMORY = "fmonnx.sources.keras.convert.convert_keras_model"
# Class names in a config that are models or framework glue, not layers of keras.layers.
CONTAINER_CLASSES = frozenset({"Functional", "Sequential", "Model", "TFOpLambda", "SlicingOpLambda"})


@contextmanager
def native_lines_to_log():
    """Send what native code writes to the process's stderr (file descriptor 2) to the log for the block.

    TensorFlow's C++ start-up lines (oneDNN, CUDA drivers, absl's notice) are written before any of its
    settings apply (TF_CPP_MIN_LOG_LEVEL does not stop them in TF 2.21) and would sit above fmonnx's one
    line. Python's own errors still propagate as exceptions; the captured text is logged, at warning
    level when the block fails.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebooks): nothing to keep quiet
        yield
        return
    failed = True
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                logger.log(logging.WARNING if failed else logging.DEBUG, "TensorFlow start-up: %s", text)


def import_tensorflow() -> ModuleType:
    """Import TensorFlow, quiet by default, or say how to install it."""
    # TensorFlow's C++ start-up chatter is not the user's business; an explicit setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with native_lines_to_log():
            import tensorflow
    except ImportError as exc:
        raise MissingDependencyError(f"TensorFlow is not installed; {INSTALL_HINT}") from exc
    # its Python deprecation notices (tf2onnx calls TF1 APIs) are not the user's business either
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return tensorflow


def import_keras(loader: str) -> ModuleType:
    """The Keras module of ``loader``: ``keras`` (Keras 3) or ``tf_keras`` (Keras 2)."""
    import_tensorflow()
    try:
        with native_lines_to_log():
            if loader == "keras3":
                import keras as module
            elif loader == "tf_keras":
                import tf_keras as module
            else:
                raise ValueError(f"unknown loader {loader!r}; expected one of {LOADERS}")
    except ImportError as exc:
        package = "keras" if loader == "keras3" else "tf-keras"
        raise MissingDependencyError(f"{package} is not installed; {INSTALL_HINT}") from exc
    if loader == "keras3" and not module.__version__.startswith("3."):
        raise MissingDependencyError(f"keras {module.__version__} is installed but Keras 3 is needed; {INSTALL_HINT}")
    return module


def load_keras_model(keras_file: KerasFile, loader: str, *, unsafe: bool = False):
    """Load ``keras_file`` with ``loader``, else with the other loader.

    Returns ``(model, loader_used, keras_module)``. Custom classes unknown to
    Keras raise ModelError naming them; other failures raise ConversionError
    with the first loader's reason.
    """
    order = [loader] + [other for other in LOADERS if other != loader]
    first_error: Exception | None = None
    for name in order:
        try:
            module = import_keras(name)
        except MissingDependencyError as exc:
            if name == loader:
                first_error = exc
            continue
        try:
            with native_lines_to_log():  # the first device TensorFlow opens logs its CUDA probe here
                model = _load(module, name, keras_file, unsafe)
        except Exception as exc:  # noqa: BLE001 - any loader failure means: try the other loader
            logger.info("%s could not load %s: %s", name, keras_file.path, _first_line(exc))
            _raise_if_custom(keras_file, module)
            if first_error is None:
                first_error = exc
            continue
        if name != loader:
            logger.warning("%s could not load %s; loaded it with %s instead", loader, keras_file.path, name)
        return model, name, module
    if isinstance(first_error, MissingDependencyError):
        raise first_error
    if keras_file.format == "h5" and (keras_file.keras_version or "").startswith("3."):
        # Keras 3 cannot read back every .h5 it writes (MobileNetV3, ConvNeXt); its .keras files it can.
        advice = "save the model as .keras instead (model.save('model.keras')) and convert that"
    else:
        advice = f"load it in Python and call {IN_MEMORY}(model)"
    raise ConversionError(
        f"{keras_file.path} (saved by Keras {keras_file.keras_version or 'unknown'}) could not be loaded "
        f"by Keras 3 nor tf_keras: {_first_line(first_error)}; {advice}"
    ) from first_error


def _load(module: ModuleType, name: str, keras_file: KerasFile, unsafe: bool):
    path = str(keras_file.path)
    if name == "keras3":
        # safe_mode refuses Lambda bytecode; Lambda layers were already refused unless unsafe.
        return module.models.load_model(path, compile=False, safe_mode=not unsafe)
    if keras_file.format == "keras":
        return module.models.load_model(path, compile=False, safe_mode=not unsafe)
    # tf_keras reads .h5 files without safe mode unless one is set around the call (its Lambda layers
    # then refuse stored bytecode); the Lambda check has already run, this is the second guard.
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(not unsafe):
        return module.models.load_model(path, compile=False)


def _raise_if_custom(keras_file: KerasFile, module: ModuleType) -> None:
    known = set(dir(module.layers)) | CONTAINER_CLASSES
    custom = [(path, cls) for path, cls in layer_configs(keras_file.config) if cls not in known]
    if custom:
        listing = ", ".join(f"'{path}' ({cls})" for path, cls in custom)
        raise ModelError(
            f"{keras_file.path} uses custom layer classes that Keras cannot rebuild without their code: "
            f"{listing}; load the model in Python with custom_objects and call {IN_MEMORY}(model)"
            + (", or save it as .keras and convert that" if keras_file.format == "h5" else "")
        )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
