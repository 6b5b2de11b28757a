"""The seed papers' tables: ranks, the findings they check, and which rows they show."""
import pytest

from training import seed_tables

FAMILIES = {"ldm-t1": "ldm", "cldm-t1": "cldm", "pcldm-t1": "pcldm", "vae-t1": "vae", "vqvae-t1": "vqvae",
            "vqvae-tr-t1": "vqvae-tr"}


def lesion_row(dataset, model, dice, ap, auroc=0.9, fpr=0.01):
    return {"dataset": dataset, "model": model, "mean best Dice": dice, "AP": ap, "AUROC": auroc, "FPR@best": fpr}


def diffusion_rows(scores: dict[str, float]) -> list[dict]:
    """Every diffusion dataset with each model at one quality level (Dice = AP = level)."""
    return [lesion_row(d, m, s, s) for d in seed_tables.DIFFUSION_DATASETS for m, s in scores.items()]


def test_mean_ranks_reward_high_scores_and_low_false_positives():
    rows = [lesion_row("A", "good", 0.8, 0.7, 0.95, 0.001), lesion_row("A", "bad", 0.2, 0.1, 0.6, 0.2),
            lesion_row("A", "mixed", 0.8, 0.1, 0.6, 0.001)]
    ranks = seed_tables.mean_ranks(rows, ["A"], ["good", "bad", "mixed"])
    # Dice: good and mixed tie for 1-2 (1.5 each); AP and AUROC: good 1, the others tie (2.5); FPR like Dice
    assert ranks == pytest.approx({"good": 1.25, "mixed": 2.0, "bad": 2.75})


def test_diffusion_ordering_is_checked_on_both_synthetic_cohorts():
    held = seed_tables.diffusion_verdict(diffusion_rows({"ldm-t1": 0.1, "cldm-t1": 0.2, "pcldm-t1": 0.3,
                                                        "vae-t1": 0.25}), FAMILIES)
    assert "holds on 4 of 4" in held and "ahead" in held and "not ahead" not in held
    broken = diffusion_rows({"ldm-t1": 0.3, "cldm-t1": 0.2, "pcldm-t1": 0.25, "vae-t1": 0.5})
    verdict = seed_tables.diffusion_verdict(broken, FAMILIES)
    assert "holds on 0 of 4" in verdict and "IXI + fluid AP" in verdict and "not ahead" in verdict
    assert "pcldm > cldm on 4 of 4; cldm > ldm on 0 of 4; pcldm > ldm on 0 of 4" in verdict
    assert "needs" in seed_tables.diffusion_verdict(diffusion_rows({"ldm-t1": 0.1}), FAMILIES)


def test_diffusion_section_lists_every_model_best_rank_first():
    lines = seed_tables.diffusion_section(diffusion_rows({"ldm-t1": 0.1, "pcldm-t1": 0.3, "vae-t1": 0.2}), FAMILIES)
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["pcldm-t1", "vae-t1", "ldm-t1"]
    assert seed_tables.diffusion_section([], FAMILIES) == []


def architecture_rows(ssim_tr: float, prc_tr: float) -> list[dict]:
    rows = []
    for model, ssim, prc in (("vqvae-t1", 0.95, 0.2), ("vqvae-tr-t1", ssim_tr, prc_tr)):
        rows += [{"dataset": "IXI healthy", "model": model, "SSIM": ssim},
                 {"dataset": "OASIS healthy", "model": model, "SSIM": ssim},
                 {"dataset": "IXI + shapes", "model": model, "AP": prc, "AUROC": 0.9}]
    return rows


def test_architectures_finding_needs_anatomy_kept_and_shapes_found():
    assert "finding reproduces" in seed_tables.architectures_verdict(architecture_rows(0.93, 0.5), FAMILIES)
    assert "does not reproduce" in seed_tables.architectures_verdict(architecture_rows(0.85, 0.5), FAMILIES)
    assert "does not reproduce" in seed_tables.architectures_verdict(architecture_rows(0.93, 0.1), FAMILIES)
    lines = seed_tables.architectures_section(architecture_rows(0.93, 0.5), FAMILIES)
    text = "\n".join(lines)
    assert "| vqvae-tr-t1 | 0.930 | 0.930 | 0.900 | 0.500 |" in text
    assert "| *VQ-VAE+Tr (Malé et al.)* | 0.930 | - | 0.940 | 0.740 |" in text


def test_contrast_section_spread_and_flair_cases_against_the_better_baseline():
    rows, volumes = [], []
    aps = {"anatomy-any": (0.5, 0.45, 0.55), "intensity-t1": (0.4, 0.1, 0.1), "intensity-bright": (0.1, 0.4, 0.5)}
    for model, values in aps.items():
        rows += [{"dataset": d, "model": model, "AP": ap} for d, ap in zip(seed_tables.SYNTHETIC_CONTRASTS, values)]
        rows += [{"dataset": d, "model": model, "AP": 0.2} for d in seed_tables.REAL_OTHER_CONTRASTS]
    flair_ap = {"anatomy-any": (0.3, 0.1), "intensity-t1": (0.05, 0.05), "intensity-bright": (0.2, 0.2)}
    for model, (a, b) in flair_ap.items():
        volumes += [{"dataset": "MSLUB-26 FLAIR", "case": "MSLUB-26 FLAIR", "model": model, "AP": a},
                    {"dataset": "BraTS FLAIR", "case": "BraTS-01 FLAIR", "model": model, "AP": b}]
    text = "\n".join(seed_tables.contrast_section(rows, volumes))
    assert "| anatomy-any | 0.500 | 0.450 | 0.550 | 0.200 | 0.200 | 0.200 | 0.200 |" in text  # spread 0.1 / 0.5
    assert "`anatomy-any`: at least the better intensity baseline on 1 of 2 real FLAIR cases (MSLUB-26 FLAIR)" in text
    assert "`intensity-bright`:" not in text
