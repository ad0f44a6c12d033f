"""Tasks: data, model, loss and evaluation sweep for each experiment family."""

from seqpe_jax.tasks import classification, lm

TASKS = {'vit': classification.ClassificationTask, 'gpt': lm.LanguageModelTask}


def build(config):
  """The task for `config.model.name`."""
  if config.model.name not in TASKS:
    raise ValueError(f"Unknown model '{config.model.name}'; use one of: {', '.join(TASKS)}.")
  return TASKS[config.model.name](config)
