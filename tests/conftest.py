"""Shared test settings."""
import torch

# `make test` runs two pytest workers on two cores: one intra-op thread each avoids oversubscription, which makes the
# many tiny ops of the conformance tests several times slower when the machine is busy.
torch.set_num_threads(1)
