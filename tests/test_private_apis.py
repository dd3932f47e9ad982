"""Private APIs of Lightning and peft that LayerLens relies on: if an upgrade moves one, this says which."""

import inspect

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from peft.tuners.adalora.layer import RankAllocator

PRIVATE = [
    (
        ModelCheckpoint,
        "_save_topk_checkpoint",
        ("self", "trainer", "monitor_candidates"),
        "layerlens.training.callbacks.CheckpointFromStep overrides it",
    ),
    (RankAllocator, "_element_score", ("self", "n"), "layerlens.baselines.adalora reads AdaLoRA's scores with it"),
    (RankAllocator, "_combine_ipt", ("self", "ipt_E", "ipt_AB"), "layerlens.baselines.adalora combines them with it"),
]


@pytest.mark.parametrize("owner,name,parameters,why", PRIVATE, ids=[f"{o.__name__}.{n}" for o, n, _, _ in PRIVATE])
def test_a_private_method_is_where_layerlens_expects_it(owner, name, parameters, why):
    method = getattr(owner, name, None)
    assert method is not None, f"{owner.__module__}.{owner.__name__}.{name} is gone ({why}): pin the older version"
    found = tuple(inspect.signature(method).parameters)
    assert found == parameters, f"{owner.__name__}.{name}{found} changed from {parameters} ({why})"


def test_lightnings_sigterm_flag_is_where_the_interruption_sets_it():
    # layerlens.training.callbacks.Interruption stops a run at a batch boundary by setting this flag.
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    connector = getattr(trainer, "_signal_connector", None)
    assert connector is not None and connector.received_sigterm is False, (
        "lightning's Trainer._signal_connector.received_sigterm moved (layerlens.training.callbacks sets it): "
        "pin lightning"
    )
