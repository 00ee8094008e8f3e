"""`fedvl serve`'s own ServerApp task (fedvl.deploy.server_task): it runs only the run it submitted."""

import io
import zipfile
from types import SimpleNamespace

from fedvl.deploy.serve import write_app
from fedvl.deploy.server_task import is_ours


def _fab(app_dir) -> SimpleNamespace:
    """The Flower App as `flwr run` ships it: a zip with its pyproject.toml (what the check reads)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(app_dir / "pyproject.toml", "pyproject.toml")
    return SimpleNamespace(content=buf.getvalue())


def test_serve_claims_its_own_run_only(tiny_cfg, tmp_path):
    write_app(tmp_path / "app", tiny_cfg(), tmp_path / "run", token="a1b2c3")
    fab = _fab(tmp_path / "app")
    assert is_ours(fab, "a1b2c3")
    assert not is_ours(fab, "ffffff")  # another serve's run (or a resumed one's token differs)
    # another Flower App that names the same token but a ServerApp of its own
    text = (tmp_path / "app" / "pyproject.toml").read_text()
    (tmp_path / "app" / "pyproject.toml").write_text(text.replace("fedvl.deploy.server_app:server_app",
                                                                  "mine.app:server_app"))
    assert not is_ours(_fab(tmp_path / "app"), "a1b2c3")
    assert not is_ours(SimpleNamespace(content=b"not a zip"), "a1b2c3")  # a bundle that is not even one
