"""The phantom renderer: determinism, each finding changing the image where it should, posture ψ."""
import numpy as np
import pytest
import torch
import torch.nn.functional as Fnn

from cxrl.data.labels import labels_to_tensor
from cxrl.data.phantom import PhantomCXR, posture_matrix, render_phantom, sample_posture

RES = 64
SEEDS = range(6)


def render(labels, seed, **kw):
    return render_phantom(labels, seed=seed, resolution=kw.pop("resolution", RES), **kw)


def test_output_contract_and_determinism():
    a, info = render({"Cardiomegaly": 1}, 3)
    b, _ = render({"Cardiomegaly": 1}, 3)
    c, _ = render({"Cardiomegaly": 1}, 4)
    assert a.dtype == np.float32 and a.shape == (RES, RES) and 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert info["posture"].tolist() == [1, 1, 0, 0, 0] and "Cardiomegaly" in info["severity"]
    big, _ = render({}, 3, resolution=96)
    assert big.shape == (96, 96)
    t, _ = render(labels_to_tensor({"Cardiomegaly": 1}), 3)  # a [14] tensor works like the dict
    assert np.array_equal(t, a)


def test_anatomy_is_a_chest():
    img, info = render({}, 0)
    m = info["masks"]
    lung = img[m["lungs"]].mean()
    assert lung < img[m["heart"]].mean() - 0.2, "aerated lung must be darker than the heart"
    assert img[RES // 3: 2 * RES // 3, :1].mean() < 0.25, "air beside the chest wall is dark"
    assert m["lung_left_image"][:, : RES // 2].sum() > 0.9 * m["lung_left_image"].sum()


@pytest.mark.parametrize("seed", SEEDS)
def test_effusion_makes_the_base_denser(seed):
    clean, info = render({}, seed)
    wet, winfo = render({"Pleural Effusion": 1}, seed)
    base = winfo["masks"]["effusion"]
    assert base.sum() > 15
    assert (wet[base] - clean[base]).mean() > 0.1
    assert np.abs(wet[~base & info["masks"]["lungs"]] - clean[~base & info["masks"]["lungs"]]).mean() < 0.03
    ys = np.nonzero(base)[0]
    assert ys.mean() > RES * 0.55, "fluid collects at the lung bases"


@pytest.mark.parametrize("seed", SEEDS)
def test_cardiomegaly_widens_the_heart(seed):
    _, normal = render({}, seed)
    _, big = render({"Cardiomegaly": 1}, seed)
    width = lambda m: np.any(m, axis=0).sum()  # noqa: E731
    assert width(big["masks"]["heart"]) >= 1.25 * width(normal["masks"]["heart"])
    assert big["ctr"] > 0.55 > normal["ctr"]


@pytest.mark.parametrize("seed", SEEDS)
def test_pneumothorax_makes_the_apex_lucent(seed):
    clean, info = render({}, seed)
    ptx, pinfo = render({"Pneumothorax": 1}, seed)
    air = pinfo["masks"]["pneumothorax"]
    assert air.sum() > 10
    assert (clean[air] - ptx[air]).mean() > 0.08, "pleural air is darker than aerated lung"
    side = max(("lung_left_image", "lung_right_image"), key=lambda k: (info["masks"][k] & air).sum())
    apex = np.zeros_like(air)
    apex[: int(RES * 0.4)] = True
    lung_apex = info["masks"][side] & apex
    assert (clean[lung_apex] - ptx[lung_apex]).mean() > 0.04
    assert np.nonzero(air)[0].min() < RES * 0.35, "the apex is involved"


@pytest.mark.parametrize("label,mask", [("Lung Opacity", "opacity"), ("Consolidation", "consolidation"),
                                        ("Pneumonia", "pneumonia"), ("Atelectasis", "atelectasis"),
                                        ("Edema", "edema"), ("Lung Lesion", "lesion"), ("Support Devices", "devices"),
                                        ("Pleural Other", "pleural_other"), ("Fracture", "fracture")])
def test_each_finding_brightens_its_region(label, mask):
    for seed in SEEDS:
        clean, _ = render({}, seed)
        sick, info = render({label: 1}, seed)
        region = info["masks"][mask]
        assert region.sum() >= 2, (label, seed)
        assert (sick[region] - clean[region]).mean() > 0.05, (label, seed)


def test_uncertain_is_drawn_weaker_than_positive():
    clean, _ = render({}, 1)
    pos, info = render({"Pleural Effusion": 1}, 1)
    unc, _ = render({"Pleural Effusion": -1}, 1)
    region = info["masks"]["effusion"]
    assert (pos - clean)[region].sum() > (unc - clean)[region].sum() > 0


def test_negative_and_blank_labels_draw_nothing():
    clean, _ = render({}, 2)
    neg, _ = render({"Pleural Effusion": 0, "Cardiomegaly": None, "No Finding": 1}, 2)
    assert np.array_equal(clean, neg)


@pytest.mark.parametrize("seed", range(4))
def test_posture_psi_maps_back_to_canonical(seed):
    psi = sample_posture(np.random.default_rng(seed), 1.0)
    assert not np.allclose(psi, [1, 1, 0, 0, 0])
    moved, info = render({"Cardiomegaly": 1}, seed, posture=psi, resolution=96)
    canonical, _ = render({"Cardiomegaly": 1}, seed, resolution=96)
    assert np.allclose(info["posture"], psi)
    theta = torch.from_numpy(posture_matrix(info["posture"])).float()[None]
    grid = Fnn.affine_grid(theta, (1, 1, 96, 96), align_corners=False)
    aligned = Fnn.grid_sample(torch.from_numpy(moved)[None, None], grid, align_corners=False)[0, 0].numpy()
    inside = (grid.abs() < 0.95).all(-1)[0].numpy()
    err_aligned = np.abs(aligned - canonical)[inside].mean()
    err_raw = np.abs(moved - canonical)[inside].mean()
    assert err_aligned < 0.035 and err_aligned < 0.4 * err_raw


def test_sample_posture_strength_zero_is_identity():
    assert np.allclose(sample_posture(np.random.default_rng(0), 0.0), [1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="strength"):
        sample_posture(np.random.default_rng(0), -1)
    with pytest.raises(ValueError, match="posture"):
        render({}, 0, posture=[1, 1, 0, 0])


def test_bad_labels_and_resolution():
    with pytest.raises(ValueError, match="Cardiomegally"):
        render({"Cardiomegally": 1}, 0)
    with pytest.raises(ValueError, match="resolution"):
        render({}, 0, resolution=8)


def test_phantom_dataset_pairs_reports_labels_and_images():
    ds = PhantomCXR(split="validate", resolution=RES, seed=5, posture_strength=0.5, length=40)
    assert len(ds) == 40
    item = ds[7]
    assert set(item) == {"id", "prompt", "labels", "image", "posture", "report"}
    assert item["image"].shape == (1, RES, RES) and item["image"].dtype == torch.float32
    assert item["posture"].shape == (5,)
    k = 7 % len(ds.reports)
    assert torch.equal(item["labels"].nan_to_num(9), ds.reports.label_tensor(k).nan_to_num(9))
    assert item["prompt"] == ds.reports.prompts[k]
    expected, _ = render_phantom(item["labels"], posture=item["posture"].numpy(), seed=ds.item_seed(7), resolution=RES)
    assert np.array_equal(item["image"][0].numpy(), expected)
    again = PhantomCXR(split="validate", resolution=RES, seed=5, posture_strength=0.5, length=40)[7]
    assert torch.equal(again["image"], item["image"])


def test_render_speed_smoke():
    """1,000 phantoms at 64 px must take seconds, not minutes (loose bound: shared CI cores)."""
    import time

    render({}, 0)
    start = time.perf_counter()
    for i in range(200):
        render({"Pleural Effusion": 1, "Support Devices": 1}, i)
    per_image = (time.perf_counter() - start) / 200
    assert per_image < 0.03, f"{per_image * 1e3:.1f} ms per phantom"
