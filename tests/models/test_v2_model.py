"""v2's chat model at toy size: conversations with an image, regions and routing tokens become one batch, the
loss reads only the answers, and the answers depend on the image and the region."""

import copy
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import visionllm
from visionllm.cli import main
from visionllm.config import LLMConfig
from visionllm.models.common.inputs import ProcessorError
from visionllm.models.common.sequence import IGNORE
from visionllm.models.v2.chat import Turn
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.heads import phrase_separation
from visionllm.models.v2.model import ChatExample, Targets, VisionLLMv2
from visionllm.models.v2.object_decoder import ObjectTargets
from visionllm.models.v2.regions import RegionPrompt
from visionllm.models.v2.vision import VisionConfig


@pytest.fixture
def model(micro_model, micro_objects, micro_keypoints):
    torch.manual_seed(0)
    config = VisionLLMv2Config(
        vision=VisionConfig(
            image_size=64, patch_size=8, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64
        ),
        llm=LLMConfig(hidden_size=48, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=96),
        objects=micro_objects,
        keypoints=micro_keypoints,
    )
    return VisionLLMv2(config, copy.deepcopy(micro_model.processor.tokenizer))


def scene(colour):
    image = np.full((64, 64, 3), 128, np.uint8)
    image[8:28, 8:28] = colour
    return image


def examples(model):
    p = model.processor
    red, blue = p.image(scene((220, 30, 30))), p.image(scene((30, 30, 220)))
    ask = Turn("user", "<image> what colour is region1 <region>?")
    box = RegionPrompt("box", [8, 8, 28, 28])
    return [
        ChatExample(red, (ask, Turn("assistant", "red.")), (box,)),
        ChatExample(blue, (ask, Turn("assistant", "blue.")), (box,)),
        ChatExample(red, (Turn("user", "<image> find the square."), Turn("assistant", "square [DET]"))),
    ]


def test_a_batch_expands_the_image_and_labels_only_the_answers(model):
    batch = model.processor.collate(examples(model), model.link)
    ids, labels = batch.input_ids, batch.labels
    assert ((ids == model.processor.image_id).sum(1) == 64).all()  # the 8 x 8 patch tokens
    assert batch.region_masks.shape == (2, 64, 64) and batch.region_image.tolist() == [0, 1]
    assert batch.region_masks[0, 8:28, 8:28].all() and batch.region_masks[0].sum() == 20 * 20
    tokenizer = model.processor.tokenizer
    answers = [tokenizer.decode(row[row != IGNORE]) for row in labels]
    assert answers[0].startswith("red") and answers[1].startswith("blue") and "[DET]" in answers[2]
    det = model.processor.route_ids["[DET]"]
    at = (ids[2] == det).nonzero().item()
    assert (ids[2, at + 1 : at + 5] == model.processor.query_id).all() and (labels[2, at + 1 : at + 5] == IGNORE).all()


def test_the_loss_trains_every_part_and_reads_the_image(model):
    batch = model.processor.collate(examples(model), model.link)
    losses = model(batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    for part in (model.bridge, model.regions, model.llm):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
    assert model.link.tables["object"].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision.parameters())  # frozen
    swapped = copy.copy(batch)
    swapped.pixel_values = batch.pixel_values.roll(1, 0)
    assert not torch.allclose(model(swapped)["loss"], losses["loss"])


def test_it_learns_the_colour_of_the_region_from_the_image(model):
    batch = model.processor.collate(examples(model)[:2], model.link)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(80):
        loss = model(batch)["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02 * first
    swapped = copy.copy(batch)
    swapped.pixel_values = batch.pixel_values.flip(0)  # the red image with the blue answer and back
    assert model(swapped)["loss"].item() > 5 * loss.item()


def routed_examples(model):
    """A square and a two-point "person" at two places: [DET] with boxes and masks, [POSE] with keypoints."""
    p = model.processor
    out = []
    for x in (6, 36):
        image = np.full((64, 64, 3), 128, np.uint8)
        image[20:40, x : x + 20] = (220, 30, 30)
        mask = torch.zeros(1, 64, 64)
        mask[0, 20:40, x : x + 20] = 1
        box = torch.tensor([[(x + 10) / 64, 30 / 64, 20 / 64, 20 / 64]])
        objects = ObjectTargets(box, torch.tensor([0]), mask)
        points = torch.tensor([[[x / 64, 20 / 64, 2.0], [(x + 20) / 64, 40 / 64, 2.0]]])
        find = (Turn("user", "<image> find the square."), Turn("assistant", "square [DET]"))
        pose = (Turn("user", "<image> find the corners."), Turn("assistant", "square [DET] top [POSE], bottom [POSE]"))
        out.append(ChatExample(p.image(image), find, targets=Targets(objects)))
        out.append(ChatExample(p.image(image), pose, targets=Targets(objects, points)))
    return out


def test_routed_calls_train_their_decoders_through_the_llm(model):
    batch = model.processor.collate(routed_examples(model), model.link)
    losses = model(batch)
    assert {"text", "boxes", "masks", "keypoints"} <= set(losses)
    decoders = losses["boxes"] + losses["masks"] + losses["keypoints"]
    assert torch.allclose(losses["loss"], losses["text"] + decoders)
    model.zero_grad()
    (model(batch)["loss"] - model(batch)["text"]).backward()  # the decoders' losses alone
    assert model.llm.lm.get_input_embeddings().weight.grad.abs().sum() > 0
    assert model.link.tables["object"].grad.abs().sum() > 0 and model.link.tables["keypoint"].grad.abs().sum() > 0


def test_phrase_separation_reads_the_phrases_of_the_answer(model):
    """With `phrase_separation`, the category features of different phrases of a batch are pushed apart: the
    loss joins the decoders' losses and reaches the category pooling; one phrase alone gives none."""
    model.object_decoder.config.phrase_separation = 2.0
    one = model.processor.collate(routed_examples(model)[:1], model.link)
    assert model(one)["separation"] == 0  # "square" is the batch's only phrase
    p, found = model.processor, routed_examples(model)[0]
    turns = (Turn("user", "<image> find the squares and circles."), Turn("assistant", "red square [DET], circle [DET]"))
    objects = ObjectTargets(found.targets.objects.boxes, torch.tensor([0]), found.targets.objects.masks)
    two = model.processor.collate([ChatExample(found.image, turns, targets=Targets(objects))], model.link)
    losses = model(two)
    conditions = model.link.conditions(model.hidden_states(two), two.input_ids)
    assert torch.isclose(losses["separation"], 2.0 * model._phrase_separation(two, conditions))
    features = model.object_decoder.categories.pool.pooled([s for _, s in conditions])
    assert torch.isclose(losses["separation"], 2.0 * phrase_separation(features, ["red square", "circle"]))
    model.zero_grad()
    model._phrase_separation(two, conditions).backward()
    assert model.object_decoder.categories.pool.mlp[0].weight.grad.abs().sum() > 0
    twice = (turns[0], Turn("assistant", "circle [DET], circle [DET]"))  # ", circle" is the phrase "circle" again
    again = model.processor.collate([ChatExample(found.image, twice, targets=Targets(objects))], model.link)
    assert p.tokenizer.convert_tokens_to_ids(",") != p.tokenizer.unk_token_id
    assert model(again)["separation"] == 0


def test_a_batch_moves_to_a_device_whole(model):
    """Every tensor of a batch, its targets' too, goes to the device the model runs on (a GPU's data loader
    moves batches with `.to`); the meta device stands in for a GPU here."""
    batch = model.processor.collate(routed_examples(model) + examples(model), model.link)
    batch.patches = torch.zeros(len(batch.input_ids), 3, 4, 4)
    moved = batch.to("meta", non_blocking=True)
    tensors = [v for v in vars(moved).values() if isinstance(v, torch.Tensor)]
    for targets in moved.targets:
        if targets is not None:
            objects = targets.objects
            tensors += [objects.boxes, objects.classes, objects.masks]
            tensors += [targets.keypoints] if targets.keypoints is not None else []
    assert len(tensors) == 9 + 3 * 4 + 2 and all(t.device.type == "meta" for t in tensors)
    assert moved.targets[4] is None and batch.pixel_values.device.type == "cpu"  # the original stays
    assert moved.input_ids.shape == batch.input_ids.shape


def test_a_routed_task_overfits_boxes_and_keypoints(model):
    torch.manual_seed(0)
    batch = model.processor.collate(routed_examples(model), model.link)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = model(batch)
    for _ in range(150):
        losses = model(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert losses["boxes"] < 0.3 * first["boxes"] and losses["keypoints"] < 0.3 * first["keypoints"]
    model.eval()
    with torch.no_grad():
        routed = model.routed(model.hidden_states(batch), batch.input_ids)
        out = model.decode_objects(batch.pixel_values, routed["object"])
    best = out.class_logits[..., 0].argmax(1)
    centres = out.boxes[torch.arange(4), best, 0] * 64
    assert torch.allclose(centres, torch.tensor([16.0, 16.0, 46.0, 46.0]), atol=4)  # where each square is


def test_regions_must_match_their_placeholders(model):
    bad = examples(model)[0]
    bad = ChatExample(bad.image, bad.turns, ())
    with pytest.raises(ProcessorError, match="1 <region> placeholders but 0 regions"):
        model.processor.collate([bad], model.link)
    with pytest.raises(ProcessorError, match="shows its image once"):
        model.processor.sequence([Turn("user", "no picture")], model.link)


@pytest.fixture
def trained(model):
    """The toy model fitted to all three conversations (colours of a region, and a routed detection)."""
    batch = model.processor.collate(examples(model), model.link)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(100):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_replies_come_from_the_image_and_routing_tokens_bring_their_conditions(trained):
    ask = Turn("user", "<image> what colour is region1 <region>?")
    box = RegionPrompt("box", [8, 8, 28, 28])
    assert trained.chat(scene((220, 30, 30)), [ask], [box]).text.startswith("red")
    assert trained.chat(scene((30, 30, 220)), [ask], [box]).text.startswith("blue")
    reply = trained.chat(scene((220, 30, 30)), [Turn("user", "<image> find the square.")])
    assert reply.text.startswith("square [DET]") and [route for route, _ in reply.calls] == ["[DET]"]
    assert reply.names == ["square"] and set(reply.results) == {"[DET]"}
    assert set(reply.results["[DET]"].class_names) <= {"square"}  # the decoder's typed result for the call
    # The condition generation hands the decoder is what the training layout computes at those queries.
    example = examples(trained)[2]
    batch = trained.processor.collate([example], trained.link)
    with torch.no_grad():
        hidden = trained.hidden_states(batch)[0]
    queries = (batch.input_ids[0] == trained.processor.query_id).nonzero().squeeze(1)
    assert torch.allclose(reply.calls[0][1], hidden[queries], atol=1e-4)


def test_batched_generation_equals_one_at_a_time(trained):
    prompts = [ChatExample(e.image, e.turns[:1], e.regions) for e in examples(trained)]
    together = trained.generate(trained.processor.collate(prompts, trained.link, side="left"))
    for prompt, reply in zip(prompts, together, strict=True):
        alone = trained.generate(trained.processor.collate([prompt], trained.link, side="left"))[0]
        assert alone.text == reply.text and len(alone.calls) == len(reply.calls)
        for (route, ours), (other, theirs) in zip(reply.calls, alone.calls, strict=True):
            assert route == other and torch.allclose(ours, theirs, atol=1e-4)


def test_save_then_load_gives_the_same_model_through_the_loading_table(trained, tmp_path, capsys):
    folder = trained.save_pretrained(tmp_path / "v2")
    loaded = visionllm.load_pretrained(folder)
    assert type(loaded) is VisionLLMv2 and loaded.config == trained.config
    batch = trained.processor.collate(examples(trained), trained.link)
    with torch.no_grad():
        assert torch.equal(loaded(batch)["loss"], trained(batch)["loss"])
    ask = [Turn("user", "<image> find the square.")]
    ours, theirs = loaded.chat(scene((220, 30, 30)), ask), trained.chat(scene((220, 30, 30)), ask)
    assert ours.text == theirs.text and torch.equal(ours.calls[0][1], theirs.calls[0][1])
    image = tmp_path / "in.png"
    Image.fromarray(scene((220, 30, 30))).save(image)
    assert (
        main(["predict", "--model", str(folder), "--image", str(image), "--task", "detection", "--classes", "square"])
        == 0
    )
    assert all(d["class_name"] == "square" for d in json.loads(capsys.readouterr().out)["result"])


def test_a_stage_attaching_the_decoder_starts_it_from_the_named_detector(model, tmp_path):
    """`objects.init_detector` starts a decoder the stage's checkpoint lacks (stage 2 after the chat model of stage
    1); a checkpoint that has the decoder keeps its own."""
    from safetensors.torch import save_file

    detector = tmp_path / "v1"
    detector.mkdir()
    weights = model.object_decoder.backbone.state_dict()
    save_file({"backbone." + k: v + 1 for k, v in weights.items()}, str(detector / "model.safetensors"))
    chat_only = VisionLLMv2(replace(model.config, objects=None, keypoints=None), model.processor.tokenizer)
    chat_only.save_pretrained(tmp_path / "stage1")
    config = replace(model.config, objects=replace(model.config.objects, init_detector=str(detector)))
    attached = VisionLLMv2.for_stage(config, tmp_path / "stage1")
    name = "resnet.embedder.embedder.convolution.weight"
    assert torch.equal(attached.object_decoder.backbone.state_dict()[name], weights[name] + 1)
    model.save_pretrained(tmp_path / "stage2")
    kept = VisionLLMv2.for_stage(config, tmp_path / "stage2")
    assert torch.equal(kept.object_decoder.backbone.state_dict()[name], weights[name])


def test_a_stage_starting_the_vision_encoder_starts_it_from_the_named_backbone(model, tmp_path):
    """`vision.init_backbone` starts a convolutional encoder that a stage builds new (stage 1); a checkpoint that
    has the encoder keeps its own, and does not read the folder again."""
    from safetensors.torch import save_file

    from visionllm.config import BackboneConfig

    cnn = BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic")
    vision = VisionConfig(image_size=64, patch_size=16, hidden_size=32, backbone=cnn, freeze=False)
    chat = VisionLLMv2(replace(model.config, vision=vision, objects=None, keypoints=None), model.processor.tokenizer)
    name = "resnet.embedder.embedder.convolution.weight"
    own = chat.vision.cnn.backbone.state_dict()
    v1 = tmp_path / "v1"
    v1.mkdir()
    save_file({"backbone." + k: v + 1 for k, v in own.items()}, str(v1 / "model.safetensors"))
    llm = replace(chat.config.llm, vocab_size=700)  # a new model builds its own vocabulary
    config = replace(chat.config, vision=replace(vision, init_backbone=str(v1)), llm=llm)
    started = VisionLLMv2.for_stage(config, None)
    assert torch.equal(started.vision.cnn.backbone.state_dict()[name], own[name] + 1)
    chat.save_pretrained(tmp_path / "stage1")
    config = replace(config, vision=replace(vision, init_backbone=str(tmp_path / "gone")))
    kept = VisionLLMv2.for_stage(config, tmp_path / "stage1")
    assert torch.equal(kept.vision.cnn.backbone.state_dict()[name], own[name])


def test_visionllm_chat_answers_one_message_or_a_conversation(trained, tmp_path, capsys, monkeypatch):
    folder = trained.save_pretrained(tmp_path / "v2")
    image = tmp_path / "red.png"
    Image.fromarray(scene((220, 30, 30))).save(image)
    base = ["chat", "--model", str(folder), "--image", str(image)]
    box = ["--box", "8", "8", "28", "28"]
    assert main([*base, "--message", "what colour is region1 <region>?", *box]) == 0
    assert capsys.readouterr().out.startswith("red")
    monkeypatch.setattr("sys.stdin", io.StringIO("what colour is region1 <region>?\n\n"))
    assert main([*base, *box]) == 0
    assert capsys.readouterr().out.startswith("red")
    drawn = tmp_path / "found.png"
    assert main([*base, "--message", "find the square.", "--save-vis", str(drawn)]) == 0
    reply, found = capsys.readouterr().out.splitlines()[:2]
    assert reply.startswith("square [DET]") and found.startswith("[DET] ")
    assert all(d["class_name"] == "square" for d in json.loads(found.removeprefix("[DET] ")))
    assert Image.open(drawn).size[0] >= 384
    assert main([*base, "--message", "what colour is region1 <region>?"]) == 2  # a region asked for, none given
    assert "1 <region> placeholders but 0 regions" in capsys.readouterr().err
