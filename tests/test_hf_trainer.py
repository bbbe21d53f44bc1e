"""STEP under Hugging Face ``transformers.Trainer`` (``step.integrations.hf_trainer``).

Tiny GPT-2 and BERT built from a config (no download), random tokens. The optimizer goes
in through ``Trainer(optimizers=(opt, None))``; the Trainer builds the LR scheduler and
accumulates gradients. Checked: the switch inside ``train()``, resuming from Trainer
checkpoints bit-exactly (before and after the switch), and ``save_model`` directories
loading with ``from_pretrained``, ``step.restore_sparsity``, ``step-sparsity export``'s
loader and ``step.export``/``step.load_sparse``.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers
from packaging.version import Version
from test_hf_models import VOCAB, bert, gpt2

import step
from step.export.command import load_source
from step.integrations.hf_trainer import (
    STEPCallback,
    find_step,
    step_trainer_optimizer,
)

STEPS = 8  # optimizer steps; total_steps=8 gives window 5, t_min 1, t_max 4
SWITCH = 4
SAVE_EVERY = 3  # checkpoints at 3 (precondition) and 6 (mask learning)
ACCUMULATE = 2
BATCH = 4
SEQ = 12
MODELS = {"gpt2": gpt2, "bert": bert}
RESUMES = Version(transformers.__version__) >= Version("4.47")
"""Older Trainers cannot read their own rng_state.pth under torch >= 2.6 (weights_only)."""


class RandomTokens(torch.utils.data.Dataset):
    """``n`` random token sequences with labels: the tokens themselves (a causal LM) or
    a class from the first token (sequence classification)."""

    def __init__(self, kind: str, n: int = STEPS * ACCUMULATE * BATCH) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
        self.labels = self.ids if kind == "gpt2" else self.ids[:, 0] % 2

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def model_of(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return step.sparsify(MODELS[kind]())


def training_args(out, **overrides) -> transformers.TrainingArguments:
    settings = dict(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE, learning_rate=1e-3, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=2, save_steps=SAVE_EVERY, logging_steps=2,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


def make_trainer(kind: str, out, model=None, optimizer=None, **overrides):
    model = model if model is not None else model_of(kind)
    args = training_args(out, **overrides)
    optimizer = optimizer if optimizer is not None else step_trainer_optimizer(model, args)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=RandomTokens(kind),
        optimizers=(optimizer, None),
        callbacks=[STEPCallback()],
    )
    return trainer, model, optimizer


class Run:
    """One finished ``trainer.train()``."""

    def __init__(self, kind: str, out, resume=None) -> None:
        self.trainer, self.model, self.opt = make_trainer(kind, out)
        self.forwards = 0
        self.model.register_forward_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        self.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        self.out = out


@pytest.fixture(scope="module", params=list(MODELS))
def full(request, tmp_path_factory):
    """An uninterrupted run per model, with its checkpoints."""
    return request.param, Run(request.param, tmp_path_factory.mktemp(request.param))


def sample(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = RandomTokens(kind, n=3)
    return data.ids, data.labels


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_the_switch_happens_inside_train(full):
    _, run = full
    opt = run.opt
    assert opt.phase == "mask_learning" and opt.switch_step == SWITCH
    assert opt.t == run.trainer.state.global_step == STEPS  # one STEP step per update...
    assert run.forwards == STEPS * ACCUMULATE  # ... of ACCUMULATE micro-batches
    assert all(layer.sparsity.mode == "ste" for layer in run.model.modules()
               if isinstance(layer, step.nn.SparseWeightMixin))  # fmt: skip
    assert opt.param_groups[0]["lr"] == 0.0  # the Trainer's linear schedule ran to its end


def test_the_callback_logs_phase_and_switch(full):
    _, run = full
    train_logs = [entry for entry in run.trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in train_logs] == [2, 4, 6, 8]  # 4: logged at the switch
    assert [entry["mask_learning"] for entry in train_logs] == [0.0, 1.0, 1.0, 1.0]
    assert [entry.get("switch_step") for entry in train_logs] == [None, SWITCH, SWITCH, SWITCH]


def test_the_switch_forces_a_log(tmp_path):
    """With logging_steps past the switch, the Trainer still logs the switch step."""
    trainer, model, opt = make_trainer("gpt2", tmp_path, max_steps=5, logging_steps=5,
                                       save_strategy="no")  # fmt: skip
    trainer.train()
    steps = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert opt.switch_step == 2 and steps == [2, 5]  # total_steps=5: t_max=round(2.5)=2


def test_the_switch_is_logged_once():
    """A step the GradScaler skips leaves opt.t at the switch step: no second forced log."""
    opt = step.optim.STEP(model_of("gpt2").parameters(), autoswitch=1)
    opt.state["recipe"].update(t=1)
    opt.switch_now()
    callback, state = STEPCallback(), transformers.TrainerState()
    forced = []
    for _ in range(2):
        control = transformers.TrainerControl()
        callback.on_step_end(None, state, control, optimizer=opt)
        forced.append(control.should_log)
    assert forced == [True, False]


@pytest.mark.skipif(not RESUMES, reason="transformers < 4.47 cannot resume under torch >= 2.6")
@pytest.mark.parametrize("checkpoint,phase", [(SAVE_EVERY, "precondition"),
                                              (2 * SAVE_EVERY, "mask_learning")])  # fmt: skip
def test_resume_from_a_checkpoint_is_bit_exact(full, tmp_path, checkpoint, phase):
    kind, run = full
    saved = run.out / f"checkpoint-{checkpoint}"
    state = torch.load(saved / "optimizer.pt", weights_only=True)["state"]["recipe"]
    assert (state["t"], state["phase"]) == (checkpoint, phase)
    resumed = Run(kind, tmp_path, resume=saved)
    assert resumed.forwards == (STEPS - checkpoint) * ACCUMULATE  # it did not start over
    got, want = resumed.opt, run.opt
    assert (got.phase, got.switch_step, got.t) == (want.phase, want.switch_step, want.t)
    assert [vars(r) for r in got.autoswitch.history] == [vars(r) for r in want.autoswitch.history]
    want_weights = run.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, want_weights[name]), name
    assert resumed.opt.param_groups[0]["lr"] == run.opt.param_groups[0]["lr"]


def test_a_trainer_checkpoint_is_a_sparse_model_directory(full):
    """A checkpoint mid-training (masks still learned in "ste" mode) loads with the
    export command's loader and computes what the training model computed."""
    kind, run = full
    plan = json.loads((run.out / f"checkpoint-{STEPS}" / "config.json").read_text())
    assert {layer["mode"] for layer in plan["step_sparsity"]["layers"].values()} == {"ste"}
    loaded = load_source(run.out / f"checkpoint-{STEPS}")
    ids, _ = sample(kind)
    assert torch.equal(logits(loaded, ids), logits(run.model.eval(), ids))


def test_save_model_loads_everywhere(tmp_path):
    """The shipped model: freeze, ``save_model``, then plain ``from_pretrained`` (exact
    N:M weights, no step code), ``restore_sparsity``, and step's own export formats."""
    kind = "bert"
    trainer, model, opt = make_trainer(kind, tmp_path / "run", max_steps=4, save_strategy="no")
    trainer.train()
    assert opt.phase == "mask_learning"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # STEP switched: freeze has nothing to warn about
        step.freeze(model).eval()
    trainer.save_model(str(tmp_path / "final"))
    ids, _ = sample(kind)
    want = logits(model, ids)
    cls = type(model)

    plain = cls.from_pretrained(tmp_path / "final").eval()
    torch.testing.assert_close(logits(plain, ids), want, rtol=1e-5, atol=1e-5)
    restored = step.restore_sparsity(cls.from_pretrained(tmp_path / "final")).eval()
    assert step.nn.sparsity_plan(restored) == step.nn.sparsity_plan(model)
    assert torch.equal(logits(restored, ids), want)
    assert torch.equal(logits(load_source(tmp_path / "final"), ids), want)
    for fmt in ("dense", "compressed"):
        step.export(restored, tmp_path / fmt, format=fmt)
        shipped = step.load_sparse(tmp_path / fmt)  # built from config.json, not from_pretrained
        # (older transformers pick another attention kernel for it: equal to rounding)
        torch.testing.assert_close(logits(shipped, ids), want, rtol=1e-5, atol=1e-6)


def test_the_callback_warns_when_step_cannot_switch_in_the_run(tmp_path):
    model = model_of("gpt2")
    opt = step.optim.STEP(model.parameters(), lr=1e-3)  # no total_steps: window 1000
    trainer, _, _ = make_trainer("gpt2", tmp_path, model=model, optimizer=opt, max_steps=1,
                                 save_strategy="no")  # fmt: skip
    with pytest.warns(UserWarning, match=r"within this run of 1 optimizer steps .* total_steps=1"):
        trainer.train()


def test_the_callback_refuses_another_optimizer(tmp_path):
    model = model_of("gpt2")
    adamw = torch.optim.AdamW(model.parameters())
    trainer, _, _ = make_trainer("gpt2", tmp_path, model=model, optimizer=adamw, max_steps=1)
    with pytest.raises(TypeError, match="not a step.optim.STEP: pass Trainer"):
        trainer.train()


class TestStepTrainerOptimizer:
    def test_takes_the_training_arguments(self, tmp_path):
        model = model_of("bert")
        args = training_args(tmp_path, learning_rate=3e-4, adam_beta1=0.8, adam_beta2=0.99,
                             adam_epsilon=1e-7, weight_decay=0.05, max_steps=200)  # fmt: skip
        opt = step_trainer_optimizer(model, args, srste_decay=1e-4)
        decay, plain = opt.param_groups
        assert (decay["lr"], decay["betas"], decay["eps"]) == (3e-4, (0.8, 0.99), 1e-7)
        assert (decay["weight_decay"], plain["weight_decay"], decay["srste_decay"]) == (
            0.05, 0.0, 1e-4,
        )  # fmt: skip
        assert all(p.dim() >= 2 for p in decay["params"])
        assert all(p.dim() == 1 for p in plain["params"])  # biases and LayerNorms
        assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))
        decayed = {id(p) for p in decay["params"]}
        assert opt.sparse_params() and all(id(p) in decayed for p in opt.sparse_params())
        want = step.optim.AutoSwitch.for_run(200, beta2=0.99)
        assert vars(opt.autoswitch) == vars(want)  # total_steps from max_steps

    def test_total_steps_overrides_max_steps(self, tmp_path):
        opt = step_trainer_optimizer(model_of("gpt2"), training_args(tmp_path), total_steps=60)
        assert opt.autoswitch.total_steps == 60 and opt.autoswitch.t_max == 30

    def test_skips_frozen_parameters(self, tmp_path):
        model = model_of("bert")
        model.bert.embeddings.requires_grad_(False)
        opt = step_trainer_optimizer(model, training_args(tmp_path))
        params = [p for g in opt.param_groups for p in g["params"]]
        assert not any(p is model.bert.embeddings.word_embeddings.weight for p in params)

    def test_an_epoch_based_run_needs_total_steps(self, tmp_path):
        args = training_args(tmp_path, max_steps=-1, num_train_epochs=2)
        with pytest.raises(ValueError, match="set TrainingArguments\\(max_steps=...\\), or pass"):
            step_trainer_optimizer(model_of("gpt2"), args)

    def test_find_step_unwraps(self):
        opt = step.optim.STEP(model_of("gpt2").parameters(), total_steps=10)

        class Wrapper:  # what Accelerate's AcceleratedOptimizer looks like
            optimizer = opt

        assert find_step(Wrapper()) is opt
