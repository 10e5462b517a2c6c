"""Networks the local-learning papers measure on, built by splitfx so no download or other code is
needed: ``splitfx plan splitfx.models:resnet110``."""
from .cifar_resnet import CifarResNet, resnet32, resnet110
from .small_vit import hybrid_vit8
from .tasks import EDSR, MLP, CharGPT, MLPRegressor, SegNet, mlp8, mlp32

__all__ = ["EDSR", "MLP", "CharGPT", "CifarResNet", "MLPRegressor", "SegNet", "hybrid_vit8", "mlp8", "mlp32",
           "resnet32", "resnet110"]
