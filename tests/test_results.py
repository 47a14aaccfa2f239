"""`make results`: blocks between markers are rewritten from a real command's output, stamped with
the commit; a table whose command fails keeps its content under a line that says so."""

import dataclasses

import pytest

from maet.reporting import results
from maet.schema.resolvers import PROJECT_ROOT

DOC = """# Title
intro
<!-- results:demo -->
old stamp

```
old table
```
<!-- /results:demo -->
after
"""


def test_every_table_has_its_markers_in_its_doc():
    for table in results.TABLES:
        if table.doc:
            text = (PROJECT_ROOT / table.doc).read_text()
            assert text.count(results.MARK.format(table.name)) == 1, table.name
            assert text.count(results.END.format(table.name)) == 1, table.name


def test_replace_block_touches_only_its_block():
    out = results.replace_block(DOC, "demo", "new")
    assert out == DOC.replace("old stamp\n\n```\nold table\n```", "new")
    with pytest.raises(KeyError):
        results.replace_block(DOC, "other", "x")


def _table(tmp_path, code: str) -> results.Table:
    (tmp_path / "out").mkdir(exist_ok=True)
    return results.Table("demo", str(tmp_path / "doc.md"), ("-c", code),
                         lambda out: (out.parent / "made.txt").read_text(), kind="command", cache_args=())


def test_regenerate_writes_the_commands_table_with_a_stamp(tmp_path):
    (tmp_path / "doc.md").write_text(DOC)
    code = f"open({str(tmp_path / 'made.txt')!r}, 'w').write('| a |\\n| 1 |')"
    report = results.regenerate([_table(tmp_path, code)], tmp_path, results.git_commit())
    assert report[0][1] == "regenerated"
    text = (tmp_path / "doc.md").read_text()
    block = results.current_block(text, "demo")
    assert block.endswith("```\n| a |\n| 1 |\n```") and "old table" not in text
    assert f"at commit `{results.git_commit()}`" in block and "cache empty at start" in block and "wall " in block
    assert text.startswith("# Title\nintro\n") and text.endswith("after\n")


def test_a_command_table_is_what_the_command_printed(tmp_path):
    (tmp_path / "doc.md").write_text(DOC)
    code = "import sys; print('| b |'); print('noise', file=sys.stderr)"
    table = results.Table("demo", str(tmp_path / "doc.md"), ("-c", code), results.command_stdout, kind="command",
                          cache_args=())
    assert results.regenerate([table], tmp_path, "abc1234")[0][1] == "regenerated"
    assert results.current_block((tmp_path / "doc.md").read_text(), "demo").endswith("```\n| b |\n```")


def test_a_tables_picture_is_copied_where_its_doc_shows_it(tmp_path):
    (tmp_path / "doc.md").write_text(DOC)
    code = f"open({str(tmp_path / 'demo' / 'plot.png')!r}, 'wb').write(b'png'); print('| c |')"
    table = results.Table("demo", str(tmp_path / "doc.md"), ("-c", code), results.command_stdout, kind="command",
                          cache_args=(), image=("plot.png", str(tmp_path / "img" / "demo.png")))
    assert results.regenerate([table], tmp_path, "abc1234")[0][1] == "regenerated"
    assert (tmp_path / "img" / "demo.png").read_bytes() == b"png"


def test_a_failing_command_keeps_the_old_table_and_says_so(tmp_path):
    (tmp_path / "doc.md").write_text(DOC)
    report = results.regenerate([_table(tmp_path, "raise SystemExit(3)")], tmp_path, results.git_commit())
    assert report[0][1] == "NOT regenerated" and "exited with 3" in report[0][2]
    block = results.current_block((tmp_path / "doc.md").read_text(), "demo")
    assert block.startswith(f"**Not regenerated at commit `{results.git_commit()}`**")
    assert "old table" in block
    results.regenerate([_table(tmp_path, "raise SystemExit(4)")], tmp_path, "abc1234")  # again: one such line, not two
    assert results.current_block((tmp_path / "doc.md").read_text(), "demo").count("**Not regenerated") == 1


def test_overview_reads_commit_and_wall_time_back_from_a_stamp(tmp_path, monkeypatch):
    block = results.stamp(results.TABLES[0], "abc1234", "wall 7 min 3 s, cache empty at start, load average 0.4 "
                          "at start and 1.9 at end") + "\n\n```\n| t |\n```"
    tables = [dataclasses.replace(t, doc="doc.md") for t in results.TABLES[:2]]  # a stamped table, a bare one
    (tmp_path / "doc.md").write_text("\n".join(
        f"{results.MARK.format(t.name)}\n{block if i == 0 else 'x'}\n{results.END.format(t.name)}"
        for i, t in enumerate(tables)))
    monkeypatch.setattr(results, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(results, "TABLES", tables)
    rows = results.overview().splitlines()
    assert len(rows) == 2 + 2
    assert rows[2].endswith("| `abc1234` | 7 min 3 s | cache empty at start | 0.4 / 1.9 |") and "never" in rows[3]


def test_the_list_names_each_tables_page(capsys):
    assert results.main(["--list"]) == 0
    lines = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert lines["default"] == "README.md" and lines["distance"] == "docs/results.md"
    assert lines["alpha"] == "docs/comparing.md" and lines["ablations"] == "sweeps/README.md"
    assert lines["gemma"] == "docs/real-models.md" and lines["bench_stages"] == "(results"
