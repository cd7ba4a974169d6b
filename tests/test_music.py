"""Music: notes <-> piano roll <-> MIDI, the RNN-NADE frame model, generation, the CLI, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import rnnkit
from rnnkit.cli import app
from rnnkit.data import music as data
from rnnkit.errors import DataError, RnnkitError
from rnnkit.tasks.music import MusicGenerator, degenerate, random_transpose
from threads import one_thread

runner = CliRunner()
Q = data.TICKS  # ticks per quarter note

# Four chords, each held a half note (two quarters), in a fixed cycle: C, F, G, C (root position, close)
CHORDS = [(48, 60, 64, 67), (53, 60, 65, 69), (55, 59, 62, 67), (48, 60, 64, 72)]


def cycle_piece(name: str, cycles: int = 4, start: int = 0) -> data.Piece:
    """A four-voice piece repeating the chord cycle, starting at chord ``start``."""
    rows = []
    for i in range(cycles * len(CHORDS)):
        for voice, pitch in enumerate(CHORDS[(start + i) % len(CHORDS)]):
            rows.append((i * 2 * Q, 2 * Q, pitch, voice))
    return data.Piece(name, np.array(rows, dtype=np.int32))


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ------------------------------------------------------------------------ encoding


def test_midi_round_trip_keeps_every_note(tmp_path):
    # voices that move at different rhythms, a rest, an eighth and a dotted quarter
    notes = np.array([(0, Q, 72, 0), (Q, Q // 2, 74, 0), (3 * Q // 2, Q // 2, 76, 0), (3 * Q, Q, 72, 0),
                      (0, 3 * Q // 2, 60, 1), (3 * Q // 2, 5 * Q // 2, 62, 1), (0, 4 * Q, 48, 2)], dtype=np.int32)
    notes = notes[np.lexsort(notes.T[::-1])]
    data.write_midi(notes, tmp_path / "a.mid")
    back = data.read_score(tmp_path / "a.mid", common_key=False)
    assert np.array_equal(back.notes, notes)


def test_a_chorale_survives_midi_and_its_roll_survives_notes(tmp_path):
    import music21

    piece = data.piece_from_score(music21.corpus.parse("bach/bwv1.6"), "bwv1.6.mxl", choose_satb=True)
    assert piece.key == "F major" and piece.transpose == -5  # F major moved down to C major
    assert sorted(set(piece.notes[:, 3].tolist())) == [0, 1, 2, 3]  # the horn part is left out
    data.write_midi(piece.notes, tmp_path / "c.mid")
    assert np.array_equal(data.read_score(tmp_path / "c.mid", common_key=False).notes, piece.notes)
    roll = data.piano_roll(piece, 4)  # sixteenths: every note of this chorale sits on the grid
    again = data.Piece("x", data.roll_to_notes(roll, 4))
    assert np.array_equal(data.piano_roll(again, 4), roll)


def test_roll_marks_sounding_frames_and_notes_merge_held_frames():
    piece = data.Piece("p", np.array([(0, 2 * Q, 60, 0), (Q, Q, 64, 1)], dtype=np.int32))
    roll = data.piano_roll(piece, 2)  # eighths: 4 frames
    assert roll.shape == (4, 128)
    assert roll[:, 60].tolist() == [True] * 4 and roll[:, 64].tolist() == [False, False, True, True]
    assert data.roll_to_notes(roll, 2).tolist() == [[0, 2 * Q, 60, 0], [Q, Q, 64, 0]]


def test_common_key_shift_moves_the_tonic_to_c_or_a():
    assert data.common_key_shift(5, "major") == -5  # F -> C
    assert data.common_key_shift(7, "major") == 5   # G -> C, up rather than 7 down
    assert data.common_key_shift(2, "minor") == -5  # D minor -> A minor
    assert data.common_key_shift(9, "minor") == 0


def test_cache_round_trip_and_other_versions_refused(tmp_path):
    pieces = [cycle_piece("a.mid"), data.Piece("b.mid", cycle_piece("b").notes, 36, 24, "G major", 5)]
    path = data.save_pieces(tmp_path / "p.npz", pieces)
    back = data.load_pieces(path)
    assert [(p.name, p.bar_ticks, p.phase_ticks, p.key, p.transpose) for p in back] == \
        [(p.name, p.bar_ticks, p.phase_ticks, p.key, p.transpose) for p in pieces]
    assert all(np.array_equal(a.notes, b.notes) for a, b in zip(back, pieces))
    with np.load(path) as stored:
        arrays = {k: stored[k] for k in stored.files}
    np.savez(tmp_path / "old.npz", **{**arrays, "format_version": np.array(0)})
    with pytest.raises(DataError, match="another rnnkit version"):
        data.load_pieces(tmp_path / "old.npz")


def test_split_is_fixed_by_chorale_and_keeps_variants_together():
    assert data.split_of("bwv112.5-sc.mxl") == data.split_of("bwv112.5.mxl")
    names = [f"bwv{i}.6.mxl" for i in range(1, 400)]
    splits = [data.split_of(n) for n in names]
    assert splits == [data.split_of(n) for n in names]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.7 < shares["train"] < 0.9 and 0.05 < shares["val"] < 0.15 and 0.05 < shares["test"] < 0.15


def test_random_transpose_moves_whole_chunks_and_keeps_notes_in_range():
    frames = torch.zeros(64, 5, 12)
    frames[:, :, 3] = frames[:, 2:, 7] = 1  # pitches 3 and 7 used: room for 3 down and 4 up
    previous = torch.roll(frames, 1, 1)
    moved_prev, moved = random_transpose(previous, frames, 5)
    assert torch.equal(moved.sum((1, 2)), frames.sum((1, 2)))  # no note lost
    shifts = moved[:, 0].argmax(-1) - 3  # where pitch 3 went
    assert shifts.min() == -3 and shifts.max() == 4  # every allowed shift occurs, none beyond
    for b, s in enumerate(shifts.tolist()):
        assert torch.equal(moved[b], torch.roll(frames[b], s, -1))
        assert torch.equal(moved_prev[b], torch.roll(previous[b], s, -1))


# ------------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def cycle_model() -> MusicGenerator:
    pieces = [cycle_piece(f"p{k}.mid", start=k % 4) for k in range(8)]
    gen = MusicGenerator(steps_per_quarter=1, hidden_size=48, nade_size=24, transpose_range=0, dropout=0.0,
                         seq_len=32, batch_size=8, lr=1e-2, max_steps=250, minutes=None, progress=False)
    with one_thread():
        return gen.fit(pieces, [])  # no validation: every step is an epoch here


def test_model_learns_the_chord_cycle(cycle_model):
    untrained = MusicGenerator(cycle_model.config)
    untrained.restore(cycle_model.preprocessing())
    torch.manual_seed(0)
    untrained.model = untrained.build_model().eval()
    pieces = [cycle_piece("held.mid", start=1)]
    before, after = untrained.frame_nll(pieces), cycle_model.frame_nll(pieces)
    assert before > 0.5 * cycle_model.pitches * math.log(2) * 0.9  # near a coin flip per pitch
    assert after < 0.1 * before
    out = cycle_model.generate(bars=8, temperature=0.5, seed=3)
    frames = [tuple(np.flatnonzero(f)) for f in out["roll"]]
    assert len(frames) == 32 and out["warnings"] == []
    assert sum(f in CHORDS for f in frames) >= 30  # coherent chords, not independent pitches
    chords = [CHORDS.index(f) for f in frames if f in CHORDS]
    steps = list(zip(chords, chords[1:]))
    follows = sum(b in (a, (a + 1) % 4) for a, b in steps)  # hold, or the next chord of the cycle
    assert follows >= len(steps) - 2


def test_primer_is_continued_in_its_place_in_the_cycle(cycle_model):
    primer = data.piano_roll(cycle_piece("primer", cycles=1, start=2), 1)  # G, C, C, F: 8 frames
    out = cycle_model.generate(bars=2, primer=primer, temperature=0.3, seed=0)
    assert np.array_equal(out["roll"][:8], primer)
    assert tuple(np.flatnonzero(out["roll"][8])) in (CHORDS[1], CHORDS[2])  # F held or G next


def test_seeded_generation_is_reproducible_and_survives_save_load(cycle_model, tmp_path):
    a = cycle_model.generate(bars=4, seed=7)["roll"]
    assert np.array_equal(a, cycle_model.generate(bars=4, seed=7)["roll"])
    assert not np.array_equal(cycle_model.generate(bars=4, temperature=2.0, seed=8)["roll"],
                              cycle_model.generate(bars=4, temperature=2.0, seed=9)["roll"])
    loaded = rnnkit.load(cycle_model.save(tmp_path / "m.rnnkit"))
    assert isinstance(loaded, MusicGenerator)
    assert np.array_equal(loaded.generate(bars=4, seed=7)["roll"], a)


def test_top_p_leaves_out_the_unlikely_pitches(cycle_model):
    greedy = cycle_model.generate(bars=2, temperature=0)["roll"]
    assert np.array_equal(cycle_model.generate(bars=2, top_p=0.5, seed=4)["roll"], greedy)  # likelier side always

    def chords(top_p: float) -> int:  # frames that are one of the cycle's chords, at a wild temperature
        rolls = [cycle_model.generate(bars=4, temperature=3.0, top_p=top_p, seed=s)["roll"] for s in range(4)]
        return sum(tuple(np.flatnonzero(f)) in CHORDS for roll in rolls for f in roll)
    assert chords(0.9) > chords(1.0)  # the nucleus drops the stray pitches a high temperature lets in


def test_predict_json_answers_with_frames_and_notes(cycle_model):
    request = {"primer": [list(CHORDS[0])] * 2, "bars": 1, "temperature": 0.5, "seed": 1}
    response = cycle_model.predict_checked(request)
    assert response["frames"][:2] == [list(CHORDS[0])] * 2 and len(response["frames"]) == 2 + 4
    assert response["notes"][0] == {"pitch": 48, "start": 0.0, "duration": response["notes"][0]["duration"]}
    assert response == cycle_model.predict_checked(request)
    with pytest.raises(RnnkitError, match="not a MIDI pitch"):
        cycle_model.predict_checked({"primer": [[200]], "bars": 1})
    with pytest.raises(RnnkitError, match="bars"):
        cycle_model.predict_checked({"bars": 0})


def test_silent_or_one_note_pieces_are_reported():
    roll = np.zeros((16, 128), dtype=bool)
    assert "silent" in degenerate(roll)[0]
    roll[:, 60] = True
    assert "one note" in degenerate(roll)[0]
    roll[3, 64] = True
    assert degenerate(roll) == []
    assert "silent" in degenerate(roll, primer_frames=16)[0]  # only the generated part counts


# ------------------------------------------------------------------------ bad input and the CLI


def test_unreadable_files_and_empty_folders_are_refused(tmp_path):
    (tmp_path / "bad.mid").write_text("not a midi file")
    with pytest.raises(DataError, match="bad.mid: not a score music21 can read"):
        data.read_score(tmp_path / "bad.mid")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no music files"):
        data.read_folder(empty)
    with pytest.raises(DataError, match="none of the 1 files"):
        data.read_folder(tmp_path)
    data.write_midi(cycle_piece("x").notes, tmp_path / "good.mid")
    pieces, skipped = data.read_folder(tmp_path)
    assert [p.name for p in pieces] == ["good.mid"] and [s[0] for s in skipped] == ["bad.mid"]


def test_cli_trains_on_a_folder_and_generates_midi_and_a_plot(tmp_path):
    folder = tmp_path / "scores"
    for k in range(4):
        data.write_midi(cycle_piece(f"p{k}", start=k).notes, folder / f"p{k}.mid")
    (folder / "broken.mid").write_bytes(b"MThd garbage")
    bundle = tmp_path / "m.rnnkit"
    result = runner.invoke(app, ["music", "train", str(folder), "--out", str(bundle), "--max-steps", "3",
                                 "--hidden-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 file" in result.stderr and "trained on" in result.stderr
    out, png = tmp_path / "piece.mid", tmp_path / "roll.png"
    result = runner.invoke(app, ["music", "generate", str(bundle), "--out", str(out), "--plot", str(png),
                                 "--seed", "1", "--primer", str(folder / "p0.mid"), "--bars", "2"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    written = data.read_score(out, common_key=False)
    assert len(written.notes) > 0
    result = runner.invoke(app, ["music", "generate", str(bundle), "--out", str(tmp_path / "no.mid"),
                                 "--primer", str(folder / "broken.mid")])
    assert result.exit_code == 2 and "broken.mid: not a score music21 can read" in _one_error_line(result.stderr)
    assert not (tmp_path / "no.mid").exists()


def test_cli_refuses_an_empty_folder(tmp_path):
    result = runner.invoke(app, ["music", "train", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "holds no music files" in _one_error_line(result.stderr)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_bach_corpus_parses_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    pieces, skipped = data.bach_chorales()
    assert len(pieces) > 400 and len(skipped) < 10
    assert data.corpus_cache_path().is_file()
    assert sum(len(set(p.notes[:, 3].tolist())) == 4 for p in pieces) > 380  # four voices
    low, high = min(p.notes[:, 2].min() for p in pieces), max(p.notes[:, 2].max() for p in pieces)
    assert 28 <= low and high <= 90
    again, _ = data.bach_chorales()  # from the cache
    assert [p.name for p in again] == [p.name for p in pieces]
    assert all(np.array_equal(a.notes, b.notes) for a, b in zip(again, pieces))
