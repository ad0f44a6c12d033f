"""Tasks: data, model, loss and evaluation sweep for each experiment family."""

from seqpe_jax import choices
from seqpe_jax.tasks import classification, lm, qa

# By config.model.name, or by config.task for another use of a model (QA fine-tunes the GPT).
TASKS = {'vit': classification.ClassificationTask, 'gpt': lm.LanguageModelTask, 'qa': qa.QATask}


def build(config):
  """The task for `config.task` if the config has one, else for `config.model.name`."""
  name = config.get('task') or config.model.name
  if name not in TASKS:
    raise choices.unknown('model.name', name, TASKS)
  return TASKS[name](config)
