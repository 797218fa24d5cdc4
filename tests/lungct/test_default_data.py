import lungct.phantom
from lungct.default_data import default_phantom_root
from lungct.discover import discover


def test_default_phantom_root_generates_once_and_reuses(tmp_path, monkeypatch):
    calls = []
    real = lungct.phantom.generate_phantoms

    def counting(out_dir, **kwargs):
        calls.append(out_dir)
        return real(out_dir, **kwargs)

    monkeypatch.setattr(lungct.phantom, "generate_phantoms", counting)
    root = default_phantom_root(tmp_path, n=6, seed=1, matrix=64, progress=False)
    assert root.name.endswith("-n6-seed1") and len(calls) == 1
    assert len(discover(root).records) + len(discover(root).excluded) == 6
    assert default_phantom_root(tmp_path, n=6, seed=1, matrix=64, progress=False) == root
    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind


def test_default_phantom_root_regenerates_an_incomplete_set(tmp_path, monkeypatch):
    real = lungct.phantom.generate_phantoms
    root = default_phantom_root(tmp_path, n=5, seed=0, matrix=64, progress=False)
    (root / lungct.phantom.MARKER_NAME).unlink()
    calls = []
    monkeypatch.setattr(lungct.phantom, "generate_phantoms",
                        lambda out_dir, **kw: calls.append(1) or real(out_dir, **kw))
    assert default_phantom_root(tmp_path, n=5, seed=0, matrix=64, progress=False) == root
    assert calls == [1]
