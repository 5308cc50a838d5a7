"""Keeping nerfstudio's ``Optimizers`` pointed at a model whose parameters change size.

recon's densification replaces parameters (``nn.Parameter`` with more or fewer rows), and so does
loading a checkpoint with another number of Gaussians. Each parameter group here is one tensor
(``param_groups[0]["params"][0]``), the layout recon's row operations
(:mod:`recon.splat.strategy`) expect.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from torch import nn

__all__ = ["adopt_parameters"]


def adopt_parameters(optimizers, params: Mapping[str, nn.Parameter], names: Iterable[str]) -> None:
    """Point each named optimiser of nerfstudio ``optimizers`` at ``params[name]``, keeping its state.

    nerfstudio builds the optimisers before it loads a checkpoint (``--load-dir``), and loading
    replaces the Parameters; without this a resumed run would optimise the discarded tensors.
    Also refreshes ``optimizers.parameters`` (used for gradient clipping and zeroing).
    """
    for name in names:
        opt = optimizers.optimizers[name]
        group = opt.param_groups[0]
        old, new = group["params"][0], params[name]
        if old is not new:
            state = opt.state.pop(old, None)
            group["params"][0] = new
            if state is not None:
                opt.state[new] = state
        optimizers.parameters[name] = [new]
