"""A stratified sample of the timm zoo through every stage: trace, plan, convert, step, parity, ONNX.

A representative dozen runs by default; the full sample (every major family) with ``-m slow``."""
import pytest

from splitfx.programs.coverage import check

DEFAULT = [
    "resnet50d", "regnetx_002", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "densenet121",
    "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224", "levit_128s",
    "mixer_s16_224", "poolformer_s12",
    "rexnetr_100",  # squeeze-excite BatchNorm on pooled features: ill-conditioned if settled on 2 samples
]
SLOW = [
    "resnet18", "seresnext26d_32x4d", "resnetv2_50", "regnety_004", "efficientnet_lite0", "mobilenetv4_conv_small",
    "convnextv2_atto", "dla34", "hrnet_w18_small", "inception_v3", "legacy_xception", "xception41", "vgg11",
    "repvgg_a0", "ghostnet_100", "deit_tiny_patch16_224", "beit_base_patch16_224", "eva02_tiny_patch14_224",
    "swinv2_cr_tiny_ns_224", "maxvit_nano_rw_256", "maxvit_tiny_tf_224", "coat_lite_tiny", "cait_xxs24_224",
    "efficientformer_l1", "efficientformerv2_s0", "pvt_v2_b0", "twins_svt_small", "twins_pcpvt_small",
    "resmlp_12_224", "poolformerv2_s12", "convformer_s18", "caformer_s18", "fastvit_t8", "mobilevit_xxs",
    "mobilevitv2_050", "edgenext_xx_small", "tiny_vit_5m_224", "efficientvit_b0", "efficientvit_m0", "rexnet_100",
    "mnasnet_100",
]


def _assert_passes(name, tmp_path):
    outcome = check(name, onnx_dir=str(tmp_path))
    assert outcome.status == "pass", f"{name}: {outcome.stage}: {outcome.reason}"


@pytest.mark.parametrize("name", DEFAULT)
def test_zoo_default(name, tmp_path):
    _assert_passes(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_zoo_sample(name, tmp_path):
    _assert_passes(name, tmp_path)
