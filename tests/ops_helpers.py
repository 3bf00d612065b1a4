"""For the /ops tests: the operator's credentials, deliveries through the real receiver, jobs run
by a real burst worker, a mapping that needs a fix, and reading the rendered pages."""

from __future__ import annotations

import base64
import shutil
from html.parser import HTMLParser
from pathlib import Path

import redis

from sync.partnero.samples import sample_delivery
from sync.services import Services
from sync.settings import DashboardSettings, Settings
from sync.worker.process import build_worker
from tests.conftest import MAPPINGS, signed

OPS = DashboardSettings("ops", "a-long-password-1")
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ops:a-long-password-1").decode()}


#: The shipped customer identity, and the one it had before refer-a-friend customers (who have
#: an ``id`` and no ``key``) came along: the mapping fix the replay tests apply.
IDENTITY_FIXED = "\nidentity: data.key || data.id\n"
IDENTITY_KEY_ONLY = "\nidentity: data.key\n"


def ops_settings(settings: Settings, tmp_path: Path) -> Settings:
    """``settings`` with the dashboard's credentials and a mapping directory of its own, in which
    customers are identified by ``key`` only (see ``fix_customer_identity``)."""
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    _replace(directory / "customer.yml", IDENTITY_FIXED, IDENTITY_KEY_ONLY)
    return settings.with_overrides(dashboard=OPS, mappings_dir=directory)


def fix_customer_identity(settings: Settings) -> None:
    """The mapping fix for ``friend_customer``: the identity falls back to ``data.id``."""
    _replace(Path(settings.mappings_dir) / "customer.yml", IDENTITY_KEY_ONLY, IDENTITY_FIXED)


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer says {old.strip()!r}"
    path.write_text(text.replace(old, new))


def post(client, document: dict | bytes) -> int:
    """Deliver ``document`` through the receiver, signed; returns its inbox id."""
    body, headers = signed(document)
    response = client.post("/webhooks/partnero", data=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def work(settings: Settings, connection: redis.Redis) -> None:
    """Run every queued job (deliveries, then any Salesforce flush they ask for) and stop."""
    build_worker(Services.build(settings, connection)).work(burst=True)


def friend_customer(customer_id: str = "rf_2217") -> dict:
    """A refer-a-friend customer: identified by ``id``, without a ``key``, so it fails until the
    mapping learns to fall back to ``id`` (``fix_customer_identity``)."""
    document = sample_delivery("customer.created")
    data = document["data"]
    del data["key"]
    data["id"] = customer_id
    return document


def unparseable_amount() -> dict:
    """A sale whose amount is written with a decimal comma: it fails the mapping for good."""
    return sample_delivery("transaction.created", key="in_comma", amount="12,50")


class Page(HTMLParser):
    """A rendered page, read the way a test needs it: text by element id, list rows, form fields."""

    def __init__(self, html: str | bytes):
        super().__init__(convert_charrefs=True)
        self.html = html.decode() if isinstance(html, bytes) else html
        self._open: list[tuple[str, str | None]] = []
        self._texts: dict[str, list[str]] = {}
        self.row_ids: list[int] = []
        self.inputs: dict[str, str] = {}
        self.links: list[str] = []
        self.feed(self.html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "tr" and attributes.get("id", "").startswith("delivery-"):
            self.row_ids.append(int(attributes["id"].removeprefix("delivery-")))
        if tag == "input" and "name" in attributes:
            self.inputs[attributes["name"]] = attributes.get("value") or ""
        if tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
        if tag not in ("input", "meta", "br", "option", "link"):
            self._open.append((tag, attributes.get("id")))
            if attributes.get("id"):
                self._texts[attributes["id"]] = []

    def handle_endtag(self, tag):
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self._texts[element_id].append(data)

    def text(self, element_id: str) -> str:
        """The text inside the element ``element_id``, spaces collapsed."""
        assert element_id in self._texts, f"no element with id {element_id!r}"
        return " ".join("".join(self._texts[element_id]).split())

    def has(self, element_id: str) -> bool:
        return element_id in self._texts

    def value(self, tile_id: str) -> str:
        """The number shown by a tile of the list page's header."""
        return self.text(tile_id).split()[-1]
