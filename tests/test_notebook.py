"""notebooks/colab_demo.ipynb runs top to bottom on a CPU kernel (small sizes), within a time limit."""
import os

import pytest

from tests.helpers import one_device_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_colab_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("REPIRL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("XLA_FLAGS", one_device_xla_flags())  # one CPU device, as on a CPU runtime
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "colab_demo.ipynb"), as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "PRM best-of-N" in outputs and "rollout_acc" in outputs, outputs[-2000:]
    assert (tmp_path / "runs" / "colab" / "final" / "policy" / "config.json").is_file()
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
