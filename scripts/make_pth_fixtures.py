"""Writes tests/fixtures/*.pth with real torch: tiny random pytorch-fcn FCN8s and torchvision-style VGG16.

The point is compatibility with files torch itself writes (tests also use a
hand-written writer). Run it in a separate venv that has torch; the project
venv does not need torch:

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python scripts/make_pth_fixtures.py

Outputs (all tiny: channel width 1/128, 3 classes):
  pytorch_fcn8s_tiny.pth         FCN8s state_dict, zip format (torch >= 1.6)
  pytorch_fcn8s_tiny_legacy.pth  the same, legacy format (_use_new_zipfile_serialization=False)
  torchvision_vgg16_tiny.pth     state_dict with torchvision vgg16's keys (features.N, classifier.N)
  torch_outputs.npz              what torch computed on `fixture_input`: fcn8s logits (N,C,H,W),
                                 vgg16 fc7 (after ReLU) and fc8 for a 224x224 input
The architectures are written out here (pytorch-fcn's FCN8s, torchvision's
vgg16) with the channel counts scaled, so neither package is needed.
"""

from __future__ import annotations

import os

import numpy as np

WIDTH = 1 / 128
NUM_CLASSES = 3
FCN_INPUT_SHAPE = (1, 3, 20, 28)  # N, C, H, W; not square so that H/W swaps show
VGG_INPUT_SHAPE = (1, 3, 224, 224)  # pool5 is then 7x7, what classifier.0 expects
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

VGG_CONVS = (("conv1_1", 64), ("conv1_2", 64), "pool", ("conv2_1", 128), ("conv2_2", 128), "pool",
             ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), "pool",
             ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), "pool",
             ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512), "pool")


def channels(n: int) -> int:
    """Same rule as fcn_jax.models.scaled_channels."""
    return max(1, round(n * WIDTH))


def fixture_input(shape) -> np.ndarray:
    """Deterministic float32 NCHW input in [-1, 1] (integer arithmetic: identical everywhere)."""
    n, c, h, w = np.indices(shape)
    return (((n * 5 + c * 29 + h * 7 + w * 13) % 17) / 8.0 - 1.0).astype(np.float32)


def main():
    import torch
    from torch import nn

    def init_(module):  # variance-preserving random weights, random biases: every layer matters
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=(2.0 / m.weight[0].numel()) ** 0.5)
                nn.init.uniform_(m.bias, -0.1, 0.1)
            elif isinstance(m, nn.ConvTranspose2d):
                cin, _, k, _ = m.weight.shape
                nn.init.normal_(m.weight, std=(m.stride[0] ** 2 / (cin * k * k)) ** 0.5)

    class FCN8s(nn.Module):
        """pytorch-fcn's FCN8s (torchfcn/models/fcn8s.py), same names, order and crops; channels scaled."""

        def __init__(self, n_class):
            super().__init__()
            cin = 3
            for layer in VGG_CONVS:
                if layer != "pool":
                    name, cout = layer
                    setattr(self, name, nn.Conv2d(cin, channels(cout), 3, padding=100 if name == "conv1_1" else 1))
                    cin = channels(cout)
            self.fc6 = nn.Conv2d(cin, channels(4096), 7)
            self.fc7 = nn.Conv2d(channels(4096), channels(4096), 1)
            self.score_fr = nn.Conv2d(channels(4096), n_class, 1)
            self.score_pool3 = nn.Conv2d(channels(256), n_class, 1)
            self.score_pool4 = nn.Conv2d(channels(512), n_class, 1)
            self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
            self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
            self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)

        def forward(self, x):
            h, pools = x, []
            for layer in VGG_CONVS:
                if layer == "pool":
                    h = nn.functional.max_pool2d(h, 2, stride=2, ceil_mode=True)
                    pools.append(h)
                else:
                    h = torch.relu(getattr(self, layer[0])(h))
            pool3, pool4 = pools[2], pools[3]
            h = torch.relu(self.fc6(h))  # dropout is the identity in eval mode
            h = torch.relu(self.fc7(h))
            upscore2 = self.upscore2(self.score_fr(h))  # 1/16
            h = self.score_pool4(pool4)[:, :, 5:5 + upscore2.size(2), 5:5 + upscore2.size(3)]
            upscore_pool4 = self.upscore_pool4(upscore2 + h)  # 1/8
            h = self.score_pool3(pool3)[:, :, 9:9 + upscore_pool4.size(2), 9:9 + upscore_pool4.size(3)]
            h = self.upscore8(upscore_pool4 + h)
            return h[:, :, 31:31 + x.size(2), 31:31 + x.size(3)].contiguous()

    class VGG16(nn.Module):
        """torchvision.models.vgg16's module structure (features / avgpool / classifier), channels scaled."""

        def __init__(self, num_classes=10):
            super().__init__()
            layers, cin = [], 3
            for layer in VGG_CONVS:
                if layer == "pool":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, channels(layer[1]), 3, padding=1), nn.ReLU(inplace=True)]
                    cin = channels(layer[1])
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(cin * 7 * 7, channels(4096)), nn.ReLU(True), nn.Dropout(),
                nn.Linear(channels(4096), channels(4096)), nn.ReLU(True), nn.Dropout(),
                nn.Linear(channels(4096), num_classes),
            )

        def forward(self, x):
            x = torch.flatten(self.avgpool(self.features(x)), 1)
            fc7 = self.classifier[:5](x)
            return fc7, self.classifier[5:](fc7)

    torch.manual_seed(0)
    os.makedirs(FIXTURES, exist_ok=True)
    fcn, vgg = FCN8s(NUM_CLASSES).eval(), VGG16().eval()
    init_(fcn)
    init_(vgg)
    with torch.no_grad():
        fcn_out = fcn(torch.from_numpy(fixture_input(FCN_INPUT_SHAPE)))
        fc7, fc8 = vgg(torch.from_numpy(fixture_input(VGG_INPUT_SHAPE)))
    torch.save(fcn.state_dict(), os.path.join(FIXTURES, "pytorch_fcn8s_tiny.pth"))
    torch.save(fcn.state_dict(), os.path.join(FIXTURES, "pytorch_fcn8s_tiny_legacy.pth"),
               _use_new_zipfile_serialization=False)
    torch.save(vgg.state_dict(), os.path.join(FIXTURES, "torchvision_vgg16_tiny.pth"))
    np.savez(os.path.join(FIXTURES, "torch_outputs.npz"), fcn8s=fcn_out.numpy(), vgg16_fc7=fc7.numpy(),
             vgg16_fc8=fc8.numpy(), torch_version=np.array(torch.__version__))
    print(f"wrote fixtures with torch {torch.__version__} to {os.path.normpath(FIXTURES)}")


if __name__ == "__main__":
    main()
