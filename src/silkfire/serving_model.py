"""The code file of every logged Silkfire model (MLflow models-from-code): MLflow copies this file into the model
and runs it to get the PythonModel, so nothing is pickled. See silkfire.serving."""

import mlflow

from silkfire.serving import SilkfireVLM

mlflow.models.set_model(SilkfireVLM())
