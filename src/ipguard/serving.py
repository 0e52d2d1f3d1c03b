"""An ipguard model file as an MLflow model, to serve with ``mlflow models serve``.

What a model owner tests ``ipguard verify --url`` against, and what a thief deploys: the model
takes float32 pixels in [0, 1] shaped N x C x H x W (its normalisation inside, as every model
of the project) and answers N x K logits. The weights travel as the project's safetensors file
and its sidecar (artifacts), never as a pickle of the network.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np


class PixelModelPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the project's model file from the MLflow model's artifacts; answers logits."""

    def load_context(self, context: Any) -> None:
        from ipguard.models import load_model

        self.model, _ = load_model(context.artifacts["weights"])
        self.model.eval()

    # model_input stays unannotated: MLflow reads a type hint there as an input schema of its own
    # and would override the tensor signature the model is saved with.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:  # noqa: ANN001
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).numpy()


def save_mlflow_model(model_file: str | Path, out: str | Path) -> Path:
    """Write ``model_file`` (a project model with its sidecar) as an MLflow model directory
    ``out`` whose signature takes float32 N x C x H x W and answers float32 N x K."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from ipguard.io import read_sidecar, sidecar_path

    meta = read_sidecar(model_file)
    shape, classes = [int(s) for s in meta["input_shape"]], int(meta["num_classes"])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))
    # ipguard's own code travels with the model (code_paths): the serving process need not have
    # it installed, only what it imports.
    requirements = [f"{name}=={version(name)}" for name in ("torch", "numpy", "safetensors")]
    mlflow.pyfunc.save_model(
        str(out), python_model=PixelModelPyfunc(), signature=signature,
        artifacts={"weights": str(model_file), "sidecar": str(sidecar_path(model_file))},
        code_paths=[str(Path(__file__).resolve().parent)], pip_requirements=requirements,
        input_example=np.zeros((1, *shape), dtype=np.float32),
    )
    return Path(out)
