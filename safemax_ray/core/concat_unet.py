"""The reference CIFAR-10 DDPM of this field (Selective Amnesia's `Conditional_Model`, carried unchanged by
SalUn, EraseDiff and SFR-on) as a diffusers `UNet2DModel`.

The reference conditions every ResnetBlock on `cat[temb, cemb]`: the timestep's MLP output and the
class's MLP output (`classes_emb` or the learned null vector, then two Linear layers with swish between),
each `4 * ch` wide, projected by one Linear of `8 * ch` inputs. diffusers adds a class embedding to the
time embedding instead. `ConcatClassUNet` keeps diffusers' UNet2DModel everywhere else and makes the sum
a concatenation by construction: the time MLP writes the first half of a `time_embedding_dim = 8 * ch`
vector and leaves the second half zero, the class MLP writes the second half. No weight is a structural
zero, so fine-tuning keeps the reference's factorisation and an unlearned model exports back to the
reference checkpoint exactly (`core/sa_checkpoint.py`).

Class label K (the number of classes) is the null label; its embedding is the reference's
`null_classes_emb`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn


class TimeMLP(nn.Module):
    """The reference's `temb.dense`: Linear, swish, Linear; the output padded with zeros to `total`."""

    def __init__(self, in_dim: int, dim: int, total: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.pad = total - dim

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return F.pad(self.linear_2(F.silu(self.linear_1(t_emb))), (0, self.pad))


class ClassMLP(nn.Module):
    """The reference's `classes_emb` and `null_classes_emb` (here row K of one table) and `cemb.dense`;
    the output placed after `total - dim` zeros."""

    def __init__(self, num_embeds: int, in_dim: int, dim: int, total: int):
        super().__init__()
        self.embedding = nn.Embedding(num_embeds, in_dim)
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.pad = total - dim

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return F.pad(self.linear_2(F.silu(self.linear_1(self.embedding(labels)))), (self.pad, 0))


class ConcatClassUNet(UNet2DModel):
    """UNet2DModel whose class conditioning is concatenated with the time embedding, as the reference's.

    Built from the same config as UNet2DModel (`time_embedding_dim` = 2 x the MLP width, which is
    4 x `block_out_channels[0]`; `num_class_embeds` = classes + 1), so it saves and loads as a diffusers
    folder whose `unet/config.json` names this class."""

    @functools.wraps(UNet2DModel.__init__)  # the same signature, so diffusers' config loading works
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ch = self.config.block_out_channels[0]
        total = self.config.time_embedding_dim
        self.time_embedding = TimeMLP(ch, total // 2, total)
        self.class_embedding = ClassMLP(self.config.num_class_embeds, ch, total // 2, total)
