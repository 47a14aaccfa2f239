"""`make mutation`'s score: killed / (mutants checked − those recorded as equivalent), with the
record's rows read as single mutants, ranges and lists."""

import mutation_report


def test_the_score_counts_recorded_equivalents_out_and_lists_the_other_survivors(tmp_path, monkeypatch):
    record = tmp_path / "mutation.md"
    record.write_text("| mutant | why |\n| --- | --- |\n| `maet.a.x_f__mutmut_1, 3..4` | the same value |\n"
                      "| `maet.a.x_g__mutmut_2` | no longer made |\n")
    monkeypatch.setattr(mutation_report, "RECORD", record)
    equivalents = mutation_report.equivalent()
    assert sorted(equivalents) == ["maet.a.x_f__mutmut_1", "maet.a.x_f__mutmut_3", "maet.a.x_f__mutmut_4",
                                   "maet.a.x_g__mutmut_2"]
    verdicts = {1: "survived", 2: "killed", 3: "survived", 4: "killed", 5: "survived", 6: "not checked",
                7: "killed", 8: "timeout"}
    text, score = mutation_report.report({f"maet.a.x_f__mutmut_{n}": v for n, v in verdicts.items()}, equivalents)
    # checked: 1-5, 7, 8; recorded: 1, 3, 4 -> counted 2, 5, 7, 8, of which 2 and 7 killed
    assert score == 2 / 4
    survivors = text.split("survivors not recorded as equivalent (2)")[1].split("recorded as")[0]
    assert "x_f__mutmut_5" in survivors and "x_f__mutmut_8" in survivors and "x_f__mutmut_1\n" not in survivors
    stale = text.split("recorded as equivalent but killed or gone")[1]
    assert "x_f__mutmut_4" in stale and "x_g__mutmut_2" in stale  # killed; not among the mutants
