"""The code MLflow saves with every run's pyfunc model (models from code, no pickle): it names :class:`UdlMedModel`.

MLflow runs this file when it logs or loads the model; nothing else imports it.
"""

from mlflow.models import set_model

from udl_med.engine.mlflow_model import UdlMedModel

set_model(UdlMedModel())
