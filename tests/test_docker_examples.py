"""examples/docker/ stays usable: its configs load, and the Compose file gives siesta the
Docker socket and the network its templates name."""

from __future__ import annotations

from pathlib import Path

import yaml

from siesta.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "docker"


def test_the_jupyterlab_example_loads() -> None:
    """One container per user, a named volume per session, published on loopback."""
    config = load_config(EXAMPLES / "jupyterlab" / "siesta.yaml")
    lab = config.templates["lab"]
    assert lab.provider == "docker"
    assert lab.volumes == ["jupyter-{session}:/home/jovyan/work"]
    assert lab.network is None
    assert (EXAMPLES / "jupyterlab" / "Dockerfile").read_text().startswith("# A per-user")


def test_the_compose_file_runs_siesta_beside_docker() -> None:
    """siesta gets the Docker socket, its config, a state volume, and the network its
    docker templates reach the sessions on."""
    compose = yaml.safe_load((EXAMPLES / "compose.yaml").read_text())
    siesta = compose["services"]["siesta"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in siesta["volumes"]
    assert "./siesta-compose.yaml:/etc/siesta/siesta.yaml:ro" in siesta["volumes"]
    config = load_config(EXAMPLES / "siesta-compose.yaml")
    networks = {t.network for t in config.templates.values() if t.provider == "docker"}
    shared = {compose["networks"][name]["name"] for name in siesta["networks"]}
    assert networks == shared == {"siesta-sessions"}
