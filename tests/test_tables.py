"""Tables: per-run summary, mean ± 95 % CI over seeds, the Table 2 replica beside the published values."""
import math

import pandas as pd

from avb.report import tables


def runs(method="vae", z_dim=8, dataset="mnist", values=(-90.0, -92.0, -91.0)):
    rows = []
    for seed, lp in enumerate(values):
        rows.append({"method": method, "dataset": dataset, "binarization": "dynamic", "arch": "mlp", "z_dim": z_dim,
                     "seed": seed, "train_steps": 100, "log_px_ais": lp, "elbo": lp - 2 - seed, "gap": 2.0 + seed,
                     "elbo_is_bound": method == "vae", "iwae": lp - 1, "n_test": 10, "ais_steps": 5,
                     "ais_chains": 2, "ais_schedule": "linear", "ais_init": "prior"})
    return pd.DataFrame(rows, columns=tables.COLUMNS)


def test_ci_is_the_student_t_half_width_over_seeds():
    agg = tables.aggregate(runs())
    assert len(agg) == 1 and agg.n_seeds[0] == 3
    # sd(-90, -92, -91) = 1; t(0.975, 2) = 4.3027
    assert math.isclose(agg.log_px_ais_ci95[0], 4.302653 / math.sqrt(3), rel_tol=1e-5)
    assert math.isclose(agg.log_px_ais[0], -91.0)


def test_one_seed_has_no_interval_and_configs_are_not_pooled():
    df = pd.concat([runs(values=(-90.0,)), runs(z_dim=32, values=(-85.0, -86.0))], ignore_index=True)
    agg = tables.aggregate(df).set_index("z_dim")
    assert math.isnan(agg.loc[8, "log_px_ais_ci95"]) and agg.loc[32, "n_seeds"] == 2


def _row(md, label):
    return [c.strip() for c in next(line for line in md.splitlines() if line.startswith(f"| {label} ")).split("|")[1:-1]]


def test_table2_puts_our_columns_beside_the_papers_printed_ones():
    df = pd.concat([runs("vae", 8), runs("avb", 8), runs("avb", 32), runs("vae", 8, dataset="static_mnist")],
                   ignore_index=True)
    agg = tables.aggregate(df)
    md = tables.table2_markdown(agg)
    head = _row(md, "model")
    vae = dict(zip(head, _row(md, "VAE (8-dim)")))
    # the paper's two printed columns: the bound (ELBO) and the AIS estimate, never swapped
    assert vae["log p(x) ≥ (paper)"] == "−98.1 ± 0.5" and vae["log p(x) ≈ (paper)"] == "−90.9 ± 0.6"
    assert vae["gap (paper)"] == "7.2"  # −90.9 − (−98.1), derived from the printed columns
    avb = dict(zip(head, _row(md, "AVB (8-dim)")))
    assert avb["log p(x) ≥ (paper)"] == "(≈ −83.6 ± 0.4)" and avb["log p(x) ≈ (paper)"] == "−91.2 ± 0.6"
    assert avb["ELBO (ours)"].startswith("≈") and avb["gap (paper)"] == "≈ −7.6"
    assert dict(zip(head, _row(md, "AVB (32-dim)")))["log p(x) ≈ (paper)"] == "not in the paper"
    # the old, recollected values appear nowhere
    for old in ("−100.8", "−89.4", "2.7 ± 0.5", "2.2 ± 0.2", "0.7 ± 0.5"):
        assert old not in md
    # literature rows below ours, labelled as quotes, with IS marked
    iaf = next(line for line in md.splitlines() if line.startswith("| VAE + IAF"))
    assert "quoted by the paper" in iaf and "−80.8" in iaf and "−79.1 (IS)" in iaf
    assert md.index("| VAE + IAF") > md.index("| AVB (32-dim)")
    assert "not yet compared with the PMLR version" in md
    static = next(line for line in md.splitlines() if "static" in line)
    assert "n/a (the paper: dynamic MNIST only)" in static
    tex = tables.table2_latex(agg)
    assert r"$\pm$" in tex and "±" not in tex and "≈" not in tex and "?" not in tex


def test_distance_to_the_published_ais_value_and_its_interval():
    from scipy import stats
    agg = tables.aggregate(runs("vae", 8))
    wp = tables.with_published(agg).iloc[0]
    assert math.isclose(wp.diff_ais, -91.0 - (-90.9), abs_tol=1e-9)
    ours = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert math.isclose(wp.diff_ais_ci95, math.hypot(ours, 1.959964 * 0.6), rel_tol=1e-6)
    one = runs("vae", 8, values=(-90.0,)).assign(log_px_ais_se=0.5)
    wp1 = tables.with_published(tables.aggregate(one)).iloc[0]  # one seed: the standard error over test images
    assert math.isclose(wp1.diff_ais_ci95, 1.959964 * math.hypot(0.5, 0.6), rel_tol=1e-6)


def test_table2_shows_our_baselines_beside_the_literature_values_of_the_same_method():
    """Our VAE + IAF and auxiliary-VAE rows carry the values the paper quotes for those methods, marked as
    literature (another protocol, no difference computed); the literature rows below point to our runs."""
    df = pd.concat([runs("vae", 8), runs("iaf", 8), runs("auxvae", 32)], ignore_index=True)
    df["elbo_is_bound"] = True
    md = tables.table2_markdown(tables.aggregate(df))
    head = _row(md, "model")
    iaf = dict(zip(head, _row(md, "VAE + IAF (8-dim)")))
    assert iaf["log p(x) ≥ (paper)"].startswith("−80.8 [literature, quoted by the paper (Kingma et al., 2016")
    assert iaf["log p(x) ≈ (paper)"].startswith("−79.1 (IS) [literature")
    assert iaf["ours − paper, AIS"].startswith("n/a") and iaf["log p(x), AIS (ours)"].startswith("−91.00")
    aux = dict(zip(head, _row(md, "Auxiliary VAE (32-dim)")))
    assert aux["log p(x) ≥ (paper)"].startswith("−83.0 [literature") and aux["log p(x) ≈ (paper)"].startswith("–")
    lit = next(line for line in md.splitlines() if line.startswith("| VAE + IAF (Kingma"))
    assert "our run of VAE + IAF: its rows above" in lit
    hvi = next(line for line in md.splitlines() if line.startswith("| VAE + HVI"))
    assert "not run here" in hvi
    order = list(tables.aggregate(df).sort_values("method", key=lambda s: s.map(tables.METHOD_ORDER)).method)
    assert order == ["vae", "iaf", "auxvae"]
    tex = tables.table2_latex(tables.aggregate(df))
    assert "Kingma et al., 2016" in tex and "VAE + IAF (8-dim)" in tex and "?" not in tex and "≈" not in tex


def test_a_run_whose_ais_is_below_its_iwae_bound_is_named_in_both_tables():
    """Both are stochastic lower bounds: where the AIS is the lower one, the tables say its budget was too small
    (the VAE rows here have AIS above the IWAE and are not named)."""
    iaf = runs("iaf", 8, values=(-116.4,))
    iaf["iwae"] = -114.3
    df = pd.concat([runs("vae", 8), iaf], ignore_index=True)
    df = df.assign(elbo_is_bound=True, elbo_se=1.0, iwae_se=1.0, iwae_samples=100, log_px_ais_se=1.0)
    note = next(line for line in tables.markdown(df).splitlines() if line.startswith("AIS below the IWAE bound"))
    assert "VAE + IAF (8-dim, seed 0): AIS -116.40, IWAE -114.30" in note and "VAE (" not in note
    t2 = next(line for line in tables.table2_markdown(tables.aggregate(df)).splitlines()
              if line.startswith("AIS below the IWAE bound"))
    assert "VAE + IAF (8-dim): AIS -116.40" in t2 and "seed" not in t2.split(".")[0]
    assert tables.ais_below_iwae(runs("vae", 8)) == ""
    assert "\\toprule" in tables.table2_latex(tables.aggregate(df))  # the note stays out of the LaTeX tabular
