"""Fetch POP909 (MIT) from its public GitHub archive for users who do not have it yet.

The archive holds POP909/NNN/NNN.mid and POP909/index.xlsx; we keep the MIDI files as root/NNN.mid and turn
the index into root/index.tsv (its metre columns are what the loader needs), reading the spreadsheet's XML
directly so no spreadsheet library is required.
"""

from __future__ import annotations

import http.client
import io
import re
import shutil
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..config import UserError

POP909_ARCHIVE_URL = "https://github.com/music-x-lab/POP909-Dataset/archive/refs/heads/master.zip"
_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


def xlsx_rows(data: bytes) -> list[list[str]]:
    """Rows of the first sheet of an .xlsx file as strings (shared strings resolved, empty cells kept)."""
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        shared: list[str] = []
        if "xl/sharedStrings.xml" in book.namelist():
            root = ET.fromstring(book.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in si.iter(f"{{{_NS['m']}}}t")) for si in root.findall("m:si", _NS)]
        sheet = ET.fromstring(book.read("xl/worksheets/sheet1.xml"))
    rows = []
    for row in sheet.iter(f"{{{_NS['m']}}}row"):
        cells: dict[int, str] = {}
        for cell in row.findall("m:c", _NS):
            letters = re.match(r"[A-Z]+", cell.get("r", "A"))
            col = 0
            for ch in letters.group(0) if letters else "A":
                col = col * 26 + ord(ch) - 64
            value = cell.find("m:v", _NS)
            text = value.text if value is not None and value.text is not None else ""
            if cell.get("t") == "s" and text:
                text = shared[int(text)]
            elif cell.get("t") == "inlineStr":
                text = "".join(t.text or "" for t in cell.iter(f"{{{_NS['m']}}}t"))
            cells[col - 1] = text
        rows.append([cells.get(i, "") for i in range(max(cells) + 1)] if cells else [])
    return rows


def download_pop909(root: str | Path, url: str = POP909_ARCHIVE_URL) -> Path:
    """Download and unpack POP909 into `root` (NNN.mid files + index.tsv). Needs network access; an unreachable
    or broken archive is a one-line UserError naming the URL."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "pop909.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="download POP909") as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, a connection cut mid-way
            raise UserError(f"data.download=true: cannot download POP909 from {url}: {exc}") from None
        try:
            _unpack(archive, root)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise UserError(f"data.download=true: what {url} sent is not a complete zip archive ({exc})") from None
    return root


def _unpack(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            match = re.search(r"POP909/(\d{3})/\1\.mid$", name)
            if match:
                with zf.open(name) as src, (root / f"{match.group(1)}.mid").open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            elif name.endswith("POP909/index.xlsx"):
                rows = xlsx_rows(zf.read(name))
                (root / "index.tsv").write_text(
                    "\n".join("\t".join(cell.replace("\t", " ") for cell in row) for row in rows if row) + "\n",
                    encoding="utf-8")
