"""Music, second part: the event encoding and model, streaming, top-p, keys, cached folders, the demo part."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_music import CHORDS, Q, cycle_piece
from typer.testing import CliRunner

from rnnkit.cli import app
from rnnkit.data import music as data
from rnnkit.errors import DataError, RnnkitError
from rnnkit.tasks.music import MusicGenerator
from rnnkit.tasks.music_events import STEP, allowed, decode_events, token_count
from threads import one_thread

runner = CliRunner()

# a soprano striking the same note twice (the roll would merge them), a held bass, a rest in the alto
STRUCK_TWICE = np.array([(0, Q, 72, 0), (Q, Q, 72, 0), (2 * Q, 2 * Q, 74, 0), (0, Q, 64, 1), (2 * Q, Q, 65, 1),
                         (0, 4 * Q, 48, 2)], dtype=np.int32)


def _pitched(notes: np.ndarray) -> list[tuple[int, int, int]]:
    return sorted(map(tuple, notes[:, :3].tolist()))


# ------------------------------------------------------------------------ encoding


def test_midi_to_events_to_midi_keeps_every_note(tmp_path):
    data.write_midi(STRUCK_TWICE, tmp_path / "in.mid")
    piece = data.read_score(tmp_path / "in.mid", common_key=False)
    frames = data.frame_events(piece, 2)
    assert frames[2] == [(72, True), (48, False)]  # the soprano's second note starts; the bass is held
    data.write_midi(data.events_to_notes(frames, 2), tmp_path / "out.mid")
    assert _pitched(data.read_score(tmp_path / "out.mid", common_key=False).notes) == _pitched(STRUCK_TWICE)
    merged = data.roll_to_notes(data.piano_roll(piece, 2), 2)  # what the roll keeps: one long 72
    assert len(merged) == len(STRUCK_TWICE) - 1


def test_tokens_decode_to_the_same_frames():
    gen = MusicGenerator(steps_per_quarter=2, transpose_range=0, encoding="events")
    piece = data.Piece("x.mid", STRUCK_TWICE)
    gen._set_ranges([piece])
    tokens, phase, frames = gen.encode_events(piece)
    assert frames == 8 and (tokens == STEP).sum() == 8 and len(phase) == len(tokens)
    assert decode_events(tokens.tolist(), gen.low) == data.frame_events(piece, 2)


def test_allowed_tokens_keep_frames_decodable():
    mask = allowed(10, last=6, sounding={2, 8})
    assert mask.shape == (token_count(10),) and mask[STEP]
    new = [k for k in range(10) if mask[4 + 2 * k]]
    held = [k for k in range(10) if mask[5 + 2 * k]]
    assert new == list(range(6)) and held == [2]  # below the last pitch; held only if it was sounding


# ------------------------------------------------------------------------ the event model


@pytest.fixture(scope="module")
def event_model() -> MusicGenerator:
    pieces = [cycle_piece(f"p{k}.mid", start=k % 4) for k in range(8)]
    gen = MusicGenerator(encoding="events", steps_per_quarter=1, hidden_size=48, transpose_range=0, dropout=0.0,
                         seq_len=8, batch_size=16, lr=2e-2, max_steps=120, minutes=None, progress=False)
    with one_thread():
        return gen.fit(pieces, [])


def test_event_model_learns_the_chord_cycle(event_model):
    untrained = MusicGenerator(event_model.config)
    untrained.restore(event_model.preprocessing())
    torch.manual_seed(0)
    untrained.model = untrained.build_model().eval()
    held = [cycle_piece("held.mid", start=1)]
    assert event_model.frame_nll(held) < 0.25 * untrained.frame_nll(held)
    out = event_model.generate(bars=4, temperature=0.5, seed=3)
    frames = [tuple(np.flatnonzero(f)) for f in out["roll"]]
    assert len(frames) == 16 and sum(f in CHORDS for f in frames) >= 14 and out["warnings"] == []


def test_streams_are_token_by_token_reproducible_and_batch_like_alone(event_model):
    request = {"bars": 2, "seed": 5, "temperature": 1.0}
    streamed = list(event_model.stream_checked(request))
    assert len(streamed) == 8 and all(set(piece) == {"frame", "starts"} for piece in streamed)
    assert streamed == list(event_model.stream_checked(request))
    predicted = event_model.predict_checked(request)["frames"]
    assert [sorted(p["frame"]) for p in streamed] == predicted
    # two streams stepped together as one batch write what each writes alone
    slots = [event_model.open_stream_checked(request), event_model.open_stream_checked({**request, "seed": 6})]
    together: list[list[dict]] = [[], []]
    while not all(slot.done for slot in slots):
        for mine, pieces in zip(together, event_model.step_streams(slots)):
            mine += pieces
    assert together[0] == streamed
    assert together[1] == list(event_model.stream_checked({**request, "seed": 6}))
    with pytest.raises(RnnkitError, match="cannot stream"):
        list(event_model.stream_checked({**request, "key": "D major"}))


def test_tiny_top_p_is_the_most_likely_choice(event_model):
    greedy = event_model.generate(bars=2, temperature=0)["roll"]
    assert np.array_equal(event_model.generate(bars=2, top_p=1e-6, seed=1)["roll"], greedy)
    with pytest.raises(RnnkitError, match="top_p"):
        event_model.generate(bars=1, top_p=0)


def test_key_moves_the_piece_and_a_mode_mismatch_is_said(event_model):
    plain = event_model.generate(bars=2, temperature=0)
    assert plain["key"] == "C major"
    moved = event_model.generate(bars=2, temperature=0, key="D major")
    assert moved["key"] == "D major" and moved["warnings"] == []
    assert np.array_equal(moved["notes"][:, 2], plain["notes"][:, 2] + 2)
    minor = event_model.generate(bars=2, temperature=0, key="B minor")
    assert minor["key"] == "B major" and "wrote in major, not minor" in minor["warnings"][0]
    with pytest.raises(DataError, match="not a key"):
        event_model.generate(bars=1, key="H dur")


# ------------------------------------------------------------------------ folders and the CLI


def test_a_folder_is_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "scores"
    for k in range(2):
        data.write_midi(cycle_piece(f"p{k}").notes, folder / f"p{k}.mid")
    (folder / "broken.mid").write_bytes(b"MThd garbage")
    pieces, skipped = data.read_folder(folder, cache=True)
    assert len(pieces) == 2 and [s[0] for s in skipped] == ["broken.mid"]
    monkeypatch.setattr(data, "read_score", lambda path: pytest.fail(f"{path} parsed again"))
    again, skipped_again = data.read_folder(folder, cache=True)
    assert [p.name for p in again] == [p.name for p in pieces] and skipped_again == skipped
    assert all(np.array_equal(a.notes, b.notes) for a, b in zip(again, pieces))
    data.write_midi(cycle_piece("p2").notes, folder / "p2.mid")  # a new file: the folder is read afresh
    with pytest.raises(pytest.fail.Exception, match="parsed again"):
        data.read_folder(folder, cache=True)


def test_cli_writes_an_event_model_and_refuses_a_bad_key(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "scores"
    for k in range(3):
        data.write_midi(cycle_piece(f"p{k}", start=k).notes, folder / f"p{k}.mid")
    bundle = tmp_path / "m.rnnkit"
    result = runner.invoke(app, ["music", "train", str(folder), "--out", str(bundle), "--encoding", "events",
                                 "--max-steps", "3", "--hidden-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "piece.mid"
    result = runner.invoke(app, ["music", "generate", str(bundle), "--out", str(out), "--seed", "1", "--bars", "2",
                                 "--top-p", "0.9", "--key", "Eb major", "--primer", str(folder / "p0.mid")])
    assert result.exit_code == 0, result.output
    assert "Eb" in result.stderr and out.is_file()
    result = runner.invoke(app, ["music", "generate", str(bundle), "--out", str(tmp_path / "no.mid"), "--key", "X"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "'X' is not a key" in lines[0]
    assert not (tmp_path / "no.mid").exists()


def test_demo_part_writes_a_chorale_midi_and_roll(tmp_path, monkeypatch):
    from rnnkit.cli import demo

    names = [f"bwv{i}.mxl" for i in range(1, 60)]
    by_split = {s: [n for n in names if data.split_of(n) == s][:2] for s in ("train", "val", "test")}
    pieces = [cycle_piece(n, start=i % 4) for i, n in enumerate(sum(by_split.values(), []))]
    monkeypatch.setattr(data, "bach_chorales", lambda progress=None: (pieces, []))
    demo.music_demo(tmp_path, progress=False, seconds=1.0)
    assert data.read_score(tmp_path / "chorale.mid", common_key=False).notes.size
    assert (tmp_path / "chorale.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "chorale.rnnkit" / "config.json").is_file()


def test_the_server_streams_a_piece_frame_by_frame(event_model, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnnkit.server import create_app

    client = TestClient(create_app({"chorale": event_model.save(tmp_path / "m.rnnkit")}))
    response = client.post("/v1/chorale/generate", json={"bars": 1, "seed": 2})
    assert response.status_code == 200, response.text
    blocks = [dict(line.split(": ", 1) for line in b.splitlines()) for b in response.text.strip().split("\n\n")]
    assert blocks[-1].get("event") == "done"
    frames = [json.loads(b["data"]) for b in blocks[:-1]]
    assert frames == list(event_model.stream_checked({"bars": 1, "seed": 2}))
