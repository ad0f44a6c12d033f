"""Metric writing without TensorFlow: event files a reader gets back, metrics.jsonl, and
the console's progress line."""

import json
import math

from seqpe_jax import metrics
from tests import event_files


def test_scalars_and_config_reach_the_event_files_and_the_jsonl(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  writer.write_config({'model': {'name': 'gpt', 'variant': 'tiny'}, 'seed': 3,
                       'eval': {'lengths': (128, 256)}})
  writer.write(10, {'train/loss': 2.5, 'train/lr': 1e-3})
  writer.write(20, {'train/loss': 2.25})
  writer.close()
  read = event_files.scalars(tmp_path)
  assert read['train/loss'] == {10: 2.5, 20: 2.25} and list(read['train/lr']) == [10]
  assert math.isclose(read['train/lr'][10], 1e-3, rel_tol=1e-6)  # Stored as float32.
  plugins = event_files.plugin_tags(tmp_path)
  assert '_hparams_/experiment' in plugins['hparams'] and 'config/text_summary' in plugins['text']
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows == [{'step': 10, 'train/loss': 2.5, 'train/lr': 1e-3},
                  {'step': 20, 'train/loss': 2.25}]


def test_a_resumed_writer_drops_the_rows_about_to_be_redone(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  for step in (10, 20, 30):
    writer.write(step, {'train/loss': float(step)})
  writer.close()
  metrics.MetricWriter(tmp_path, resumed_at=20).close()
  steps = [json.loads(line)['step'] for line in (tmp_path / 'metrics.jsonl').read_text()
           .splitlines()]
  assert steps == [10, 20]


def test_progress_counts_only_the_steps_this_process_ran():
  now = [100.0]
  progress = metrics.Progress(total_steps=1000, start_step=400, clock=lambda: now[0])
  now[0] += 20.0  # 100 steps after the resume at 400, at 5 steps/s.
  assert progress.update(500) == 5.0
  line = progress.line(500, {'train/loss': 3.14159})
  assert line == 'step 500/1000  loss 3.1416  5.00 steps/s  1m40s left'
  now[0] += 10.0  # Faster now: the estimate follows the last interval.
  progress.update(600)
  assert progress.line(600, {'train/loss': 3.0}).endswith('10.00 steps/s  40s left')


def test_durations_read_at_a_glance():
  assert [metrics.format_duration(s) for s in (7.4, 100, 3725, math.nan)] == [
      '7s', '1m40s', '1h02m', '?']


def test_the_config_text_sits_at_step_0_and_holds_the_config(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  writer.write_config({'seed': 3})
  writer.close()
  (text,) = [(event.step, value.tensor.string_val[0].decode())
             for event in event_files.events(tmp_path) for value in event.summary.value
             if value.tag == 'config/text_summary']
  assert text == (0, '```\n{\n  "seed": 3\n}\n```')


def test_a_fresh_writer_starts_an_empty_jsonl(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "train/loss": 2.0}\n')
  metrics.MetricWriter(tmp_path).close()  # A run that starts at step 0 redoes every step.
  assert (tmp_path / 'metrics.jsonl').read_text() == ''


def test_other_processes_write_and_say_nothing(tmp_path, monkeypatch, capsys):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 5}\n')
  monkeypatch.setattr(metrics.jax, 'process_index', lambda: 1)
  writer = metrics.MetricWriter(tmp_path)
  writer.write(10, {'train/loss': 1.0})
  writer.write_config({'seed': 0})
  writer.close()
  metrics.say('from process 1')
  assert (tmp_path / 'metrics.jsonl').read_text() == '{"step": 5}\n'
  assert not list(tmp_path.glob('events.out.tfevents.*'))
  assert capsys.readouterr().out == ''


def test_process_0_says_its_line(capsys):
  metrics.say('step 3/10')
  assert capsys.readouterr().out == 'step 3/10\n'


def test_the_summary_line_lists_each_length_in_order():
  results = {256: {'ppl': 301.23456, 'nll': 5.7}, 128: {'ppl': 290.4, 'nll': 5.6}}
  assert metrics.summary_line(results, 'ppl') == 'ppl: 128 290.4 | 256 301.2'


def test_durations_change_unit_exactly_at_a_minute_and_an_hour():
  assert [metrics.format_duration(s) for s in (59.4, 59.6, 60, 3599, 3600)] == [
      '59s', '1m00s', '1m00s', '59m59s', '1h00m']


def test_a_sweep_prints_one_line_per_point_with_its_value_and_time(capsys):
  times = iter([10.0, 12.5, 20.0])
  progress = metrics.SweepProgress('resolution (px)', 'accuracy', clock=lambda: next(times))
  progress.done(8, {'accuracy': 0.20391})
  progress.done(16, {'accuracy': 0.5})
  assert capsys.readouterr().out.splitlines() == ['  resolution 8: accuracy 0.2039 (2.5 s)',
                                                  '  resolution 16: accuracy 0.5 (7.5 s)']
