"""The POP909 download path (no network here: only its parts and its error are tested)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from musicgen.config import UserError
from musicgen.data.download import download_pop909, xlsx_rows
from musicgen.data.prepare import prepare_corpus


def _tiny_xlsx() -> bytes:
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    shared = f'<sst {ns}><si><t>song_id</t></si><si><t>name</t></si><si><t>num_beats_per_measure</t></si>' \
             f'<si><t>Hello</t></si></sst>'
    sheet = (f'<worksheet {ns}><sheetData>'
             '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row>'
             '<row r="2"><c r="A2"><v>1</v></c><c r="B2" t="s"><v>3</v></c><c r="C2"><v>3</v></c></row>'
             '<row r="3"><c r="A3"><v>2</v></c><c r="C3"><v>2</v></c></row>'
             '</sheetData></worksheet>')
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("xl/sharedStrings.xml", shared)
        zf.writestr("xl/worksheets/sheet1.xml", sheet)
    return buffer.getvalue()


def test_xlsx_index_is_read_without_a_spreadsheet_library() -> None:
    rows = xlsx_rows(_tiny_xlsx())
    assert rows == [["song_id", "name", "num_beats_per_measure"], ["1", "Hello", "3"], ["2", "", "2"]]


def test_unreachable_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.download=true: cannot download POP909"):
        download_pop909(tmp_path / "pop909", url=(tmp_path / "missing.zip").as_uri())


def test_prepare_with_download_flag_takes_the_download_path(tmp_path: Path, monkeypatch) -> None:
    called = {}

    def fake_download(root):
        called["root"] = Path(root)
        raise RuntimeError("cannot download POP909 from test: offline")

    monkeypatch.setattr("musicgen.data.prepare.download_pop909", fake_download)
    cfg = {"name": "pop909", "root": str(tmp_path / "pop909"), "download": True, "time_signature": "index",
           "split": "pop909", "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(RuntimeError, match="offline"):
        prepare_corpus(cfg, {}, progress=False)
    assert called["root"] == tmp_path / "pop909"
