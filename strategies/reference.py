"""The reference model of a stateful strategy, after a server step.

A strategy with server-side optimisation measures the clients' update against a
reference model: FedAvgM's pseudo-gradient is ``reference - aggregate``, FedOpt's
delta (FedAdam, FedYogi, FedAdagrad) ``aggregate - reference``. The server may change
the global model after aggregation (the labels-at-server step), so the model the clients receive is not the strategy's last output. Their
update must be measured against what they received, as SemiFL does; measured against
the strategy's own output, a server step of round t comes back as part of round
t+1's pseudo-gradient, and FedAvgM's momentum re-applies it for many rounds.

**The rule.** Before every ``configure_train``, :class:`fedssl.strategies.wrapper.FedSSLStrategy`
hands the inner strategy the arrays it is about to send, by :func:`set_reference`:

- a strategy with a method ``set_reference(arrays: ArrayRecord) -> None`` gets it
  called (a user's strategy that keeps its reference under another name defines it);
- otherwise an attribute ``current_arrays`` (Flower's name in FedAvgM, FedOpt and
  QFedAvg) that is not None is replaced by the arrays, in the type it held
  (``ArrayRecord`` or a dict of numpy arrays);
- a strategy with neither is stateless for this purpose and is left alone.

Flower's FedOpt family and QFedAvg already reset ``current_arrays`` from the arrays
in their own ``configure_train``; FedAvgM sets it only once, in round 1, and then
keeps its own output, which is what the rule corrects. The reference lives in the
strategy's attributes, so it is checkpointed with them (``FedSSLStrategy.state_dict``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

HOOK = "set_reference"
ATTRIBUTE = "current_arrays"


def set_reference(strategy: Strategy, arrays: ArrayRecord) -> None:
    """Make ``arrays`` (the model this round's clients receive) ``strategy``'s
    reference, by the rule in the module docstring. The arrays are copied, so the
    strategy's reference never aliases the caller's record."""
    hook = getattr(strategy, HOOK, None)
    if callable(hook):
        hook(ArrayRecord({k: Array(arrays[k].numpy().copy()) for k in arrays}))
        return
    held = getattr(strategy, ATTRIBUTE, None)
    if held is None:
        return
    if isinstance(held, ArrayRecord):
        setattr(strategy, ATTRIBUTE, ArrayRecord({k: Array(arrays[k].numpy().copy()) for k in arrays}))
    elif isinstance(held, dict):
        setattr(strategy, ATTRIBUTE, {k: np.array(arrays[k].numpy()) for k in arrays})
