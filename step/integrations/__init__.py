"""Integrations with training frameworks, each in its own module, imported by name so a
framework loads only when its integration is used:

``step.integrations.hf_trainer``
    STEP under Hugging Face ``transformers.Trainer``: :func:`step_trainer_optimizer` and
    :class:`STEPCallback` (docs/trainer.md).
"""
