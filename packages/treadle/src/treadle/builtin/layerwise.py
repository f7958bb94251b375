"""Layer-wise optimisation: each parameter is updated as soon as its gradient is complete.

The layer-wise variants of GaLore and APOLLO (``galore_adamw_layerwise``, ...) save memory by
never holding every gradient at once: a post-accumulate-grad hook steps a small optimizer for
that one parameter during ``backward`` and frees its gradient right away.

``LayerwiseOptimizer`` packages this as an ordinary ``torch.optim.Optimizer`` so the loop needs
no special case: its own ``step()`` does nothing (the work happened during backward), its
``param_groups`` are the ones schedulers adjust, and each per-parameter optimizer copies its
group's current hyperparameters (``lr`` above all) just before stepping. So any ``LambdaLR`` on
the outer optimizer drives every inner one, and ``state_dict()`` carries the inner states.

Limits, checked by the optimizer factories: no gradient accumulation (each backward steps), one
process only. Gradient clipping sees no gradients (they are consumed during backward).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch


class LayerwiseOptimizer(torch.optim.Optimizer):
    """One ``optimizer_cls`` per trainable parameter, stepped from its gradient hook."""

    def __init__(self, params: Iterable[Any], *, optimizer_cls: type[torch.optim.Optimizer], **defaults: Any) -> None:
        super().__init__(params, defaults)
        self.optimizer_cls = optimizer_cls
        self._inner: dict[torch.Tensor, tuple[torch.optim.Optimizer, dict[str, Any]]] = {}
        self._handles = []
        for group in self.param_groups:
            for param in group["params"]:
                if not param.requires_grad:
                    continue
                inner = optimizer_cls([{"params": [param], **_hyperparameters(group)}])
                self._inner[param] = (inner, group)
                self._handles.append(param.register_post_accumulate_grad_hook(self._step_parameter))

    def _step_parameter(self, param: torch.Tensor) -> None:
        inner, group = self._inner[param]
        inner.param_groups[0].update(_hyperparameters(group))
        inner.step()
        inner.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Nothing left to do: every parameter was updated during backward."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["layerwise"] = [inner.state_dict() for inner, _ in self._inner.values()]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        inner_states = state_dict.pop("layerwise", None) or []
        if inner_states and len(inner_states) != len(self._inner):
            raise ValueError(
                f"layer-wise optimizer state holds {len(inner_states)} parameters, the model has {len(self._inner)}"
            )
        super().load_state_dict(state_dict)
        for (inner, _), inner_state in zip(self._inner.values(), inner_states):
            inner.load_state_dict(inner_state)

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (the parameters then need another optimizer)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in group.items() if key != "params"}
