"""The small-batch runs shared by wuhe-batch, renorm-ghost, precise-bn and train-eval-gap.

One configuration (Wu & He's protocol: SGD momentum 0.9, weight decay 1e-4, lr 0.1 * b / 32, the same number of
training samples at every batch size b) so that a run needed by several experiments is trained once: a run's
identity is its config hash, and these four experiments build their configs here. Every BN run carries the
"eval-modes" instrument at its last step (EMA vs PreciseBN vs batch statistics; precise-bn and train-eval-gap read it).
"""
from __future__ import annotations

from .base import Run, Scale
from .common import offline, train_run
from .instruments import spec

# normlab.data has no ImageNet: the paper scale runs CIFAR-10 with a CIFAR ResNet-20 at 4x width (64-256 channels,
# so GN's G = 32 leaves 2-8 channels per group as in ResNet-50), 30 epochs.
PAPER = Scale("paper", dataset="cifar10", model="resnet", model_kw={"depth": 20, "width": 4.0}, gn="gn:32",
              batches=(32, 16, 8, 4, 2), samples=30 * 50_000, lr32=0.1, eval_samples=0, probe_samples=10_000,
              seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST; a small conv net whose last norm layer sees "
                      "7x7 positions; GN G = 8 for its 16-64 channels", dataset="mnist", model="vgg",
                      model_kw={"cfg": [16, "M", 32, "M", 64, "M"]}, gn="gn:8")
         .reduce("quick", "a 2-core CPU: three batch sizes, 24,000 training samples per run (0.4 epoch); "
                 "test error on a fixed 5,000-image half of the test split; eval-modes probes on 2,000 images",
                 batches=(32, 8, 2), samples=24_000, eval_samples=5000, probe_samples=2000))
SMOKE = QUICK.reduce("smoke", "tests only", samples=64, batches=(32, 2), eval_samples=64, probe_samples=64, seeds=2)
SCALES = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


def dataset(s: Scale) -> str:
    return offline(s.dataset)


def steps(s: Scale, b: int) -> int:
    return max(1, s.samples // b)


def run(exp: str, s: Scale, norm: str, b: int, seed: int, device: str = "cpu", train_batch: int | None = None) -> Run:
    """One run: `norm` at batch b (lr and steps from b); group "<norm> b=<b>". ghost-bn:V runs at its own batch b."""
    inst = []
    if norm == "bn":
        inst = [spec("eval-modes", dataset=dataset(s), steps=[steps(s, b) - 1], batch=b,
                     eval_samples=s.probe_samples, precise_samples=s.probe_samples)]
    return train_run(exp, f"{norm} b={b}", seed, inst, model=s.model, norm=norm, dataset=dataset(s),
                     model_kw=s.model_kw, optimizer="sgd", lr=s.lr32 * b / 32, momentum=0.9, weight_decay=1e-4,
                     batch_size=b, steps=steps(s, b), eval_every=0, eval_samples=s.eval_samples, device=device)


def eval_modes(result) -> dict:
    """The eval-modes row of a BN run (its last step), or {} when absent."""
    rows = [r for r in result.diagnostics if r.get("hook") == "eval-modes"]
    return rows[-1] if rows else {}
