"""Length-bucketed generator training (``data.token_buckets``): plans, draws, the iterator and its
state, one compilation per bucket, exact kill-and-resume mid-curriculum, the one-device loss on
every mesh, and records trained at their own length with EOS."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import N_TOKENS, REPO, VOCAB, generator_config, losses, write_procedural_token_dataset

from flextok_jax import generator, load_model
from flextok_jax.data import token_buckets as TB
from flextok_jax.data.procedural import ProceduralImageSource
from flextok_jax.data.token_views import render_views
from flextok_jax.data.token_source import TokenDataSource
from flextok_jax.train import TrainSetup, train
from flextok_jax.train.generator_task import EXPORT_FILE


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    return write_procedural_token_dataset(tmp_path_factory.mktemp("bucket_tokens"))


class FakeRecords:
    """A random-access token source of N records: tokens[i] = i * n + position (mod vocab), so a
    batch names the records it came from; ``lengths`` are the records' own lengths."""

    def __init__(self, num_records: int, num_tokens: int, lengths=None):
        self.num_tokens = num_tokens
        self._n = num_records
        self.lengths = np.full(num_records, num_tokens, np.int32) if lengths is None else np.asarray(lengths, np.int32)

    def __len__(self):
        return self._n

    def read_batch(self, indices):
        idx = np.asarray(indices, np.int64)
        tokens = (idx[:, None] * self.num_tokens + np.arange(self.num_tokens)[None]).astype(np.int32)
        return {"tokens": tokens, "label": (idx % 10).astype(np.int32), "length": self.lengths[idx]}

    def record_lengths(self):
        return self.lengths


def bucketed_config(token_dir, lengths=(2, 4, 8), tokens_per_step=128, curriculum_steps=0, mode="prefix", **train):
    c = generator_config(token_dir, **train)
    b = c.data.buckets
    b.enabled, b.mode, b.lengths, b.tokens_per_step, b.curriculum_steps = True, mode, lengths, tokens_per_step, curriculum_steps
    return c


# --------------------------------------------------------------------------- plans and draws


def test_plan_sizes_each_bucket_to_the_tokens_per_step():
    plan = TB.plan_buckets((8, 16, 32, 64, 128, 256), 4096, multiple=8)
    assert plan.batch_sizes == (512, 256, 128, 64, 32, 16) and plan.tokens_per_step == (4096,) * 6
    # Not every length divides: the nearest multiple of 8, within the 10% tolerance.
    plan = TB.plan_buckets((3, 5, 24), 1000, multiple=8, tolerance=0.1)
    assert all(b % 8 == 0 for b in plan.batch_sizes)
    assert all(abs(t - 1000) <= 100 for t in plan.tokens_per_step), plan.tokens_per_step
    assert plan.weights == pytest.approx((1 / 3,) * 3)
    with pytest.raises(ValueError, match=r"bucket of length 256: its batch of 8 .* holds 2048 tokens"):
        TB.plan_buckets((8, 256), 1024, multiple=8)
    with pytest.raises(ValueError, match="ascending"):
        TB.plan_buckets((16, 8), 1024)
    with pytest.raises(ValueError, match="3 non-negative bucket weights"):
        TB.plan_buckets((8, 16, 32), 1024, weights=(1.0, 1.0))


def test_bucket_draws_follow_weights_and_the_curriculum():
    plan = TB.plan_buckets((8, 16, 32, 64), 1024, weights=(4, 2, 1, 1), curriculum_steps=400)
    draws = np.array([plan.bucket_of_step(seed=3, step=s) for s in range(4400)])
    # Short first: only the shortest bucket in the first quarter, never the longest before 300.
    assert (draws[:100] == 0).all() and draws[:300].max() == 2 and draws[300:400].max() == 3
    # After the curriculum, frequencies follow the weights (total variation of 4000 draws).
    freq = np.bincount(draws[400:], minlength=4) / 4000
    assert 0.5 * np.abs(freq - np.array([4, 2, 1, 1]) / 8).sum() < 0.03, freq
    # The same on every process: a pure function of (seed, step).
    assert [plan.bucket_of_step(3, s) for s in range(50)] == list(draws[:50])
    assert [plan.bucket_of_step(4, s) for s in range(400, 450)] != list(draws[400:450])


# --------------------------------------------------------------------------- the iterator


def test_iterator_epochs_processes_and_state():
    source = FakeRecords(40, 8)
    plan = TB.plan_buckets((2, 4, 8), 32, multiple=2)
    it = TB.BucketedTokenIterator(source, plan, seed=1, process_index=0, process_count=1)
    seen = {b: [] for b in range(3)}
    for _ in range(60):
        bucket = it.peek_bucket()
        batch = next(it)
        length = plan.lengths[bucket]
        assert batch["tokens"].shape == (plan.batch_sizes[bucket], length)
        seen[bucket].append(batch["tokens"][:, 0] // 8)  # record ids
    for b, ids in seen.items():
        ids = np.concatenate(ids)
        first = ids[: len(ids) // 40 * 40].reshape(-1, 40)
        for epoch in first:  # every epoch of a bucket is a permutation of all records
            assert sorted(epoch) == list(range(40)), (b, epoch)
    # Two processes split each global batch: their rows, stacked, are the one-process batch.
    whole = TB.BucketedTokenIterator(source, plan, seed=5, process_index=0, process_count=1)
    halves = [TB.BucketedTokenIterator(source, plan, seed=5, process_index=p, process_count=2) for p in range(2)]
    for _ in range(10):
        want = next(whole)["tokens"]
        np.testing.assert_array_equal(np.concatenate([next(h)["tokens"] for h in halves]), want)
    # The state (step, records used per bucket) resumes exactly, through JSON.
    it = TB.BucketedTokenIterator(source, plan, seed=2, process_index=0, process_count=1)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it)["tokens"] for _ in range(9)]
    again = TB.BucketedTokenIterator(source, plan, seed=2, process_index=0, process_count=1)
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["tokens"], w)
    with pytest.raises(ValueError, match="state has 2 buckets, the plan 3"):
        again.set_state({"step": 0, "consumed": [0, 0]})
    with pytest.raises(ValueError, match="not divisible by process_count 3"):
        TB.BucketedTokenIterator(source, plan, seed=0, process_index=0, process_count=3)


def test_length_mode_puts_each_record_in_its_bucket():
    lengths = np.array([1, 2, 3, 4, 5, 8, 8, 6] * 4)
    source = FakeRecords(32, 8, lengths)
    # Room for the EOS after each bucket's longest record (none after the last position), and
    # batches sized by those widths: 16 / 3 -> 5, 16 / 5 -> 3, 16 / 8 -> 2 records.
    assert TB.eos_widths((2, 4, 8), 8) == (3, 5, 8)
    plan = TB.plan_buckets((2, 4, 8), 16, widths=TB.eos_widths((2, 4, 8), 8))
    assert plan.batch_sizes == (5, 3, 2) and plan.tokens_per_step == (15, 15, 16)
    members = TB.bucket_members(plan, 32, "length", lengths)
    assert [sorted(set(lengths[m])) for m in members] == [[1, 2], [3, 4], [5, 6, 8]]
    it = TB.BucketedTokenIterator(source, plan, seed=0, mode="length", record_lengths=lengths,
                                  process_index=0, process_count=1)
    for _ in range(12):
        bucket = it.peek_bucket()
        batch = next(it)
        length = plan.lengths[bucket]
        assert batch["tokens"].shape == (plan.batch_sizes[bucket], min(length + 1, 8))
        assert (batch["length"] <= length).all() and (bucket == 0 or (batch["length"] > plan.lengths[bucket - 1]).all())
        np.testing.assert_array_equal(batch["length"], lengths[batch["tokens"][:, 0] // 8])
    weighted = TB.weights_by_records(plan, members)  # 8, 8 and 16 records; batches of 5, 3, 2
    assert weighted.weights == pytest.approx(np.array([8 / 5, 8 / 3, 8]) / (8 / 5 + 8 / 3 + 8))
    with pytest.raises(ValueError, match=r"do not fit buckets \(2, 4\)"):
        TB.bucket_members(TB.plan_buckets((2, 4), 16), 32, "length", lengths)
    with pytest.raises(ValueError, match=r"bucket widths \(2, 4, 8\) must hold each bucket's EOS: \(3, 5, 8\)"):
        TB.BucketedTokenIterator(source, TB.plan_buckets((2, 4, 8), 16), seed=0, mode="length",
                                 record_lengths=lengths, process_index=0, process_count=1)


def test_length_mode_weighs_every_position_as_the_data_does():
    """Half the records stop after 1 token, half use all 8. With batches sized by width, the
    step-averaged loss sees EOS as half the targets at position 1, as the data has it; sizing
    bucket 1 by its length (1, not 2 positions) would halve its weight (measured share 1/3)."""
    lengths = np.array([1, 8] * 32)
    source = FakeRecords(64, 8, lengths)

    def eos_share(sized_by):
        # Batch sizes from widths ``sized_by``; the batches themselves always hold the EOS.
        plan = TB.plan_buckets((1, 8), 16, widths=sized_by, tolerance=0.0)
        plan = dataclasses.replace(plan, widths=TB.eos_widths((1, 8), 8))
        plan = TB.weights_by_records(plan, TB.bucket_members(plan, 64, "length", lengths))
        it = TB.BucketedTokenIterator(source, plan, seed=0, mode="length", record_lengths=lengths,
                                      process_index=0, process_count=1)
        eos = other = 0.0
        for _ in range(2000):
            batch = next(it)
            positions = batch["tokens"].size  # every position of these batches is trained
            eos += np.sum(batch["length"] == 1) / positions
            other += np.sum(batch["length"] > 1) / positions
        return eos / (eos + other)

    assert eos_share((2, 8)) == pytest.approx(0.5, abs=0.03)
    assert eos_share((1, 8)) == pytest.approx(1 / 3, abs=0.03)


# --------------------------------------------------------------------------- training


def test_every_bucket_compiles_once_and_steps_hold_the_planned_tokens(token_dir):
    config = bucketed_config(token_dir, total_steps=30)
    setup = TrainSetup.from_config(config, devices=jax.devices()[:1])
    data = setup.task.dataset()
    state = setup.init_state()
    used = []
    for _ in range(30):
        used.append(data.peek_bucket())
        batch = next(data)
        assert batch["tokens"].size == 128  # 64 x 2, 32 x 4, 16 x 8: tolerance 0 here
        state, metrics = setup.run_step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    assert set(used) == {0, 1, 2}
    assert setup.step._jitted._cache_size() == 3  # one compiled step per bucket, reused
    assert setup.task.items_per_batch(16) == 128


def test_bucketed_kill_and_resume_is_exact_mid_curriculum(token_dir, tmp_path):
    def config(**kw):
        return bucketed_config(token_dir, curriculum_steps=8, total_steps=12, **kw)

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(config(), whole)
    assert train(config(stop_at_step=5), parts)["step"] == 5  # inside the curriculum (checkpoint at 4 and 5)
    train(config(), parts)
    want, got = losses(whole), losses(parts)
    assert sorted(got) == list(range(1, 13))
    np.testing.assert_array_equal([got[s] for s in range(1, 13)], [want[s] for s in range(1, 13)])
    _, p_whole = generator.load_generator(os.path.join(whole, "export", EXPORT_FILE))
    _, p_parts = generator.load_generator(os.path.join(parts, "export", EXPORT_FILE))
    jax.tree.map(np.testing.assert_array_equal, p_parts, p_whole)
    # Each step's band metrics are those of its bucket's length; the curriculum opens the
    # buckets shortest first (steps 0-2: only length 2; from step 8: all three).
    plan = TB.plan_buckets((2, 4, 8), 128, curriculum_steps=8)
    draws = [plan.bucket_of_step(int(config().data.seed), s) for s in range(12)]
    assert draws[:3] == [0, 0, 0] and max(draws[:6]) <= 1, draws
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [("loss/pos_005-016" in row) for row in rows] == [d == 2 for d in draws]


def test_bucketed_step_gives_the_one_device_loss_on_every_mesh(token_dir):
    config = bucketed_config(token_dir)
    config.optimizer.warmup_steps = 0
    config.optimizer.eps = 1e-6

    def three_steps(shape):
        config.mesh.shape = shape
        setup = TrainSetup.from_config(config, devices=jax.devices()[: int(np.prod(shape))])
        data, state = setup.task.dataset(), setup.init_state()
        out = []
        for _ in range(3):
            state, metrics = setup.run_step(state, next(data))
            out.append({k: float(metrics[k]) for k in ("loss", "grad_norm")})
        return out

    ref = three_steps((1, 1, 1))
    # One mesh that splits data, fsdp and tensor at once: the bucketed batches are what is new
    # here; every mesh of the issue is checked for the fixed-length step (test_generator_train.py).
    for shape in [(2, 2, 2)]:
        for step, (got, want) in enumerate(zip(three_steps(shape), ref)):
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=f"{k} step {step} mesh {shape}")


def test_length_mode_trains_each_record_at_its_length_with_eos(token_dir, tmp_path):
    config = bucketed_config(token_dir, mode="length", total_steps=40)
    config.model.eos = True
    source = TokenDataSource(token_dir)
    lengths = (1 + np.arange(len(source)) % N_TOKENS).astype(np.int32)  # 1 .. 8, each 24 times

    class WithLengths:  # the written records, given other lengths
        num_tokens = source.num_tokens

        def __len__(self):
            return len(source)

        def read_batch(self, indices):
            return {**source.read_batch(indices), "length": lengths[np.asarray(indices)]}

        def record_lengths(self):
            return lengths

    result = train(config, tmp_path, source=WithLengths())
    assert result["step"] == 40
    got = losses(tmp_path)
    assert abs(got[1] - np.log(VOCAB + 1)) < 0.05, got[1]  # EOS is one more class
    # Measured: 5.30 at step 1, 4.26 over steps 31-40 (0.80 of it).
    assert np.mean([got[s] for s in range(31, 41)]) < 0.85 * got[1]
    gen, params = generator.load_generator(os.path.join(tmp_path, "export", EXPORT_FILE))
    tokens, stopped = gen.generate(params, np.arange(8, dtype=np.int32) % 10, None, rng=jax.random.key(0))
    assert np.all((1 <= np.asarray(stopped)) & (np.asarray(stopped) <= N_TOKENS))
    with pytest.raises(ValueError, match="set model.eos=True"):
        config.model.eos = False
        TrainSetup.from_config(config)


def test_tokenize_dataset_quality_stores_each_records_adaptive_length(token_dir, tmp_path):
    ckpt = os.path.join(os.path.dirname(token_dir), "tokenizer.safetensors")
    out = tmp_path / "adaptive"
    # This random decoder ignores its tokens (adaLN-zero), so each picture's distance is the same
    # at every k (1.06 .. 1.37): 1.15 gives k=1 to some and all 8 tokens (target missed) to the rest.
    target = 1.15
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.cli", "tokenize-dataset", "--checkpoint", ckpt, "--source", "procedural",
         "--num_images", "24", "--image_size", "32", "--out", str(out), "--batch_size", "8",
         "--quality", str(target), "--quality_steps", "2"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    source = TokenDataSource(out)
    assert source.manifest["quality"] == {"target": target, "steps": 2, "seed": 0}
    records = source.read_batch(range(len(source)))
    # The same pictures through the API choose the same length (and ids) per image.
    model, params = load_model(ckpt)
    pictures = ProceduralImageSource(24, 32, seed=0)
    images = np.concatenate([render_views(pictures[i]["image"], 32, (0,)) for i in range(24)])
    found = model.tokenize_adaptive(params, images, target, num_steps=2)
    np.testing.assert_array_equal(records["length"], found.num_tokens)
    np.testing.assert_array_equal(records["tokens"], found.ids)
    counts = {int(k): v for k, v in source.manifest["length_counts"].items()}
    assert counts == {int(k): int(c) for k, c in zip(*np.unique(found.num_tokens, return_counts=True))}
    assert set(counts) == {1, 8}, counts


def test_bucketed_vs_fixed_comparison_scores_bands_and_curves(token_dir, tmp_path):
    from flextok_jax.benchmarks import buckets as B

    # One comparison (it trains both models from scratch), evaluated every 3 steps, serves both halves.
    results = B.run_comparison(token_dir, str(tmp_path), steps=6, batch=16, lengths=(2, 4, 8), eval_records=64,
                               eval_every=3)
    assert set(results) == {"fixed", "bucketed"}
    for name, row in results.items():
        assert row["seconds"] > 0 and row["tokens_per_s"] > 0
        assert {"loss", "loss/pos_001", "loss/pos_002-004", "loss/pos_005-016"} <= set(row), row
    # The band losses are the teacher-forced cross-entropy at full length, independently in numpy.
    gen, params = generator.load_generator(os.path.join(tmp_path, "fixed", "export", EXPORT_FILE))
    rows = TokenDataSource(token_dir).read_batch(range(64))
    logits = np.asarray(gen.logits(params, rows["label"], rows["tokens"]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, rows["tokens"][..., None], -1)[..., 0]  # [64, 8]
    np.testing.assert_allclose(results["fixed"]["loss"], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["fixed"]["loss/pos_005-016"], ce[:, 4:].mean(), rtol=1e-5)
    assert "bucketed" in B.format_comparison(results) and "loss/pos_001" in B.format_comparison(results)
    # The loss curves and the time to reach each run's final loss.
    for name, row in results.items():
        assert [p["step"] for p in row["curve"]] == [3, 6]
        # The last point is the exported EMA weights' loss: the segments resumed exactly.
        np.testing.assert_allclose(row["curve"][-1]["loss"], row["loss"], rtol=1e-6)
        assert row["seconds_per_step"] > 0
    for row in results.values():
        for target in results:
            for key in ("loss", "loss/pos_001", "loss/pos_005-016"):
                final = results[target]["curve"][-1][key]
                step = next((p["step"] for p in row["curve"] if p[key] <= final), None)
                assert row[f"seconds_to_{target}_{key}"] == (
                    float("inf") if step is None else pytest.approx(step * row["seconds_per_step"]))
    assert "loss at step 3" in B.format_comparison(results)
    curve = [{"step": 100, "loss": 2.0}, {"step": 200, "loss": 1.5}, {"step": 300, "loss": 1.2}]
    assert B.time_to_loss(curve, 0.5, 1.5) == 100.0 and B.time_to_loss(curve, 0.5, 1.0) == float("inf")
    bands = [{"step": 100, "loss": 2.0, "loss/pos_001": 3.0}, {"step": 200, "loss": 1.0, "loss/pos_001": 2.5}]
    assert B.time_to_loss(bands, 0.5, 2.6, "loss/pos_001") == 100.0
