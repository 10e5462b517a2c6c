"""Networks the local-learning papers measure on, built by splitfx so no download or other code is
needed: ``splitfx plan splitfx.models:resnet110``."""
from .cifar_resnet import CifarResNet, resnet32, resnet110
from .tasks import EDSR, CharGPT, MLPRegressor, SegNet

__all__ = ["EDSR", "CharGPT", "CifarResNet", "MLPRegressor", "SegNet", "resnet32", "resnet110"]
