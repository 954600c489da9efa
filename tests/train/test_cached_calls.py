"""Decoder-only stages on cached query states (`train.cache_query_states`) and the weight average
(`train.ema_decay`)."""

import random
import signal

import pytest
import torch
from safetensors.torch import load_file

from visionllm.config import ConfigError
from visionllm.formats.tasks import Task
from visionllm.models.v2 import cached_calls
from visionllm.models.v2.cached_calls import CachedCallBatch, CachedCallStream
from visionllm.models.v2.data import ChatMixture
from visionllm.models.v2.model import VisionLLMv2
from visionllm.train.average import AVERAGE_FILE, WeightAverage
from visionllm.train.loop import TrainConfig, TrainingInterrupted, train
from visionllm.train.mix import MixConfig

DECODERS_ALONE = ["vision", "bridge", "regions", "llm", "link", "object_decoder", "keypoint_decoder", "patch_labels"]
IMAGE_MIX = {"tasks": {"generation": 1.0, "editing": 1.0}}


def test_the_cache_holds_the_query_states_the_live_model_computes(micro_v2_model, tiny_shapesworld, tmp_path):
    mix = MixConfig(tasks={"generation": 1.0, "editing": 1.0})
    mixture = ChatMixture(tiny_shapesworld.root, "train", micro_v2_model.processor, mix, seed=3)
    stream = CachedCallStream(mixture, micro_v2_model, tmp_path / "cache.safetensors", progress=False)
    for task in (Task.GENERATION, Task.EDITING):
        states, targets, sources = stream.cache[task]
        drawings = mixture.samples[task]
        assert states.shape == (len(drawings), 64, micro_v2_model.llm.hidden_size)
        assert (sources is not None) == (task is Task.EDITING)
        k = len(drawings) - 1
        example = mixture.example(task, drawings[k], random.Random(f"cache:3:{task.value}:{k}"))
        batch = micro_v2_model.collate([example])
        with torch.no_grad():
            hidden = micro_v2_model.hidden_states(batch)
        (_, live), *_ = micro_v2_model.link.conditions(hidden, batch.input_ids)
        torch.testing.assert_close(states[k].float(), live, atol=0.02, rtol=0.02)  # kept in bfloat16
        torch.testing.assert_close(targets[k].float(), example.targets.image, atol=1e-3, rtol=0)


def test_a_second_stream_reads_the_cache_file_instead_of_computing_it(
    micro_v2_model, tiny_shapesworld, tmp_path, monkeypatch
):
    mix = MixConfig(tasks={"generation": 1.0})
    path = tmp_path / "cache.safetensors"

    def mixture():
        return ChatMixture(tiny_shapesworld.root, "train", micro_v2_model.processor, mix, seed=0)

    first = CachedCallStream(mixture(), micro_v2_model, path, progress=False)
    monkeypatch.setattr(cached_calls, "_collect", lambda *a: pytest.fail("the cache was computed again"))
    second = CachedCallStream(mixture(), micro_v2_model, path, progress=False)
    torch.testing.assert_close(second.cache[Task.GENERATION][0], first.cache[Task.GENERATION][0])
    # example i is a function of (seed, i): the same calls in the same order
    assert [first[i].states.sum().item() for i in range(8)] == [second[i].states.sum().item() for i in range(8)]


def test_a_cache_made_by_other_weights_is_made_again(micro_v2_model, tiny_shapesworld, tmp_path, monkeypatch):
    mix = MixConfig(tasks={"generation": 1.0})
    path = tmp_path / "cache.safetensors"
    mixture = ChatMixture(tiny_shapesworld.root, "train", micro_v2_model.processor, mix, seed=0)
    CachedCallStream(mixture, micro_v2_model, path, progress=False)
    other = VisionLLMv2(micro_v2_model.config)  # a different start checkpoint, the same drawings
    made, collect = [], cached_calls._collect
    monkeypatch.setattr(cached_calls, "_collect", lambda *a: made.append(a) or collect(*a))
    CachedCallStream(mixture, other, path, progress=False)
    assert made, "a cache of other weights was reused"
    made.clear()
    CachedCallStream(mixture, other, path, progress=False)
    assert not made, "the cache of these weights was made again"


def test_a_batch_of_cached_calls_has_the_image_decoders_losses_alone(micro_v2_model, tiny_shapesworld, tmp_path):
    mix = MixConfig(tasks={"generation": 1.0, "editing": 1.0})
    mixture = ChatMixture(tiny_shapesworld.root, "train", micro_v2_model.processor, mix, seed=0)
    stream = CachedCallStream(mixture, micro_v2_model, tmp_path / "cache.safetensors", progress=False)
    examples = [stream[i] for i in range(12)]
    batch = micro_v2_model.collate(examples)
    assert isinstance(batch, CachedCallBatch)
    assert {t.value for t in batch.calls} == {"generation", "editing"}
    torch.manual_seed(0)
    losses = micro_v2_model(batch)
    torch.manual_seed(0)
    wanted = {}
    for task, (states, targets, sources) in batch.calls.items():
        decoder = micro_v2_model.generation_decoder if task is Task.GENERATION else micro_v2_model.editing_decoder
        wanted[task.value] = decoder.loss(states.float(), targets.float(), None if sources is None else sources.float())
    assert set(losses) == {"loss", "generation", "editing"}
    for name, value in wanted.items():
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-5)
    weight = micro_v2_model.config.decoder_loss_weight
    assert losses["loss"].item() == pytest.approx(weight * sum(v.item() for v in wanted.values()), rel=1e-5)


def test_every_batch_of_cached_calls_holds_each_task_in_its_share(micro_v2_model, tiny_shapesworld, tmp_path):
    mix = MixConfig(tasks={"generation": 2.0, "editing": 1.0})
    mixture = ChatMixture(tiny_shapesworld.root, "train", micro_v2_model.processor, mix, seed=0)
    stream = CachedCallStream(mixture, micro_v2_model, tmp_path / "cache.safetensors", batch_size=7, progress=False)
    batches = [[stream[b * 7 + j].task for j in range(7)] for b in range(4)]
    assert all(batch == batches[0] for batch in batches)  # the same positions: the decoders' shapes stay
    assert batches[0].count(Task.GENERATION) == 5 and batches[0].count(Task.EDITING) == 2  # 4.67 and 2.33
    drawn = {stream[b * 7].states.sum().item() for b in range(4)}
    assert len(drawn) > 1, "the drawings differ from batch to batch"


def test_a_stage_on_cached_states_trains_the_image_decoders_and_writes_their_average(
    tmp_path, tiny_shapesworld, micro_v2, write_preset
):
    preset = write_preset(
        micro_v2, tmp_path, tiny_shapesworld.root, "stage5", mix=IMAGE_MIX, freeze=DECODERS_ALONE,
        cache_query_states=True, ema_decay=0.5, optim={"warmup_steps": 1, "lr": 0.01},
    )  # fmt: skip
    final = train(preset)
    run = tmp_path / "stage5"
    assert (run / "query_states.safetensors").exists()
    torch.manual_seed(0)  # the stage's seed: the weights it started from
    start = VisionLLMv2(VisionLLMv2.config_class.from_dict(micro_v2)).state_dict()
    last = load_file(str(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors"))
    average = load_file(str(sorted((run / "checkpoints").iterdir())[-1] / AVERAGE_FILE))
    written = load_file(str(final / "model.safetensors"))
    decoder = [n for n in written if n.startswith("generation_decoder.unet.") and n in average]
    assert decoder, "the decoders' parameters are averaged"
    assert not any(n.startswith(("llm.", "vision.", "link.")) for n in average), "frozen parts are not averaged"
    for name in decoder[:5]:
        torch.testing.assert_close(written[name], average[name])  # final/ holds the average ...
    assert any(not torch.equal(written[n], last[n]) for n in decoder)  # ... not the live weights
    for name in [n for n in written if n.startswith(("llm.", "vision.", "link."))]:
        torch.testing.assert_close(written[name], last[name])
        assert torch.equal(written[name], start[name]), f"{name} is frozen"
    assert any(not torch.equal(written[n], start[n]) for n in decoder), "the decoders trained"


def test_a_resumed_run_with_an_average_ends_as_an_uninterrupted_one(
    tmp_path, tiny_shapesworld, micro_v2, write_preset, monkeypatch, signal_at
):
    def preset(name: str):
        return write_preset(
            micro_v2, tmp_path, tiny_shapesworld.root, name, mix=IMAGE_MIX, freeze=DECODERS_ALONE,
            cache_query_states=True, ema_decay=0.9,
        )  # fmt: skip

    whole = load_file(str(train(preset("whole")) / "model.safetensors"))
    stopped = preset("stopped")
    signal_at(3, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        train(stopped)
    monkeypatch.undo()
    assert (tmp_path / "stopped/checkpoints/step-3" / AVERAGE_FILE).exists()
    resumed = load_file(str(train(stopped, resume=True) / "model.safetensors"))
    for name in [n for n in whole if n.startswith(("generation_decoder.", "editing_decoder."))]:
        assert torch.equal(resumed[name], whole[name]), name


def test_the_average_follows_its_closed_form():
    layer = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    average = WeightAverage(layer, decay=0.9)
    kept = torch.zeros(1, 2)
    for n in range(30):
        with torch.no_grad():
            layer.weight.fill_(float(n + 1))
        average.update()
        decay = min(0.9, (1 + n) / (10 + n))
        kept = decay * kept + (1 - decay) * (n + 1)
    torch.testing.assert_close(average.average["weight"], kept)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"mix": {"tasks": {"generation": 1.0, "detection": 1.0}}}, "['detection']"),
        ({"freeze": ["vision", "bridge", "regions", "object_decoder"]}, "['llm', 'link']"),
    ],
)
def test_a_cache_of_query_states_that_would_go_stale_is_refused(
    tmp_path, tiny_shapesworld, micro_v2, write_preset, settings, words
):
    preset = write_preset(
        micro_v2, tmp_path, tiny_shapesworld.root, "bad", **({"mix": IMAGE_MIX, "freeze": DECODERS_ALONE} | settings),
        cache_query_states=True,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        train(preset)


def test_a_cache_of_query_states_needs_a_model_with_image_decoders(
    tmp_path, tiny_shapesworld, micro_model, write_preset
):
    preset = write_preset(micro_model.config.to_dict(), tmp_path, tiny_shapesworld.root, "v1", cache_query_states=True)
    with pytest.raises(ConfigError, match="no image decoders"):
        train(preset)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_a_decay_outside_zero_and_one_is_refused(decay):
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=decay)
