"""The taste model: a logistic matrix factorisation of "was an impression played?" (pure; numpy/scipy).

Plays alone confound taste with exposure (what the catalogue's browse surface showed the
user); impressions that were *not* played say as much as those that were. The taste model
fits, on the window's impressions aggregated per (user, item),

    logit P(play | impression of item i to user u) = b + b_i + g_u[genre(i)] + U_u · V_i

by maximum likelihood (binomial: ``positives`` of ``impressions``) with an L2 penalty, using
L-BFGS with exact gradients (every sum is a ``numpy.bincount``, so a step costs a few passes
over the pairs). ``b_i`` is the item's appeal beyond exposure, ``g_u`` the user's taste per
genre and ``U_u · V_i`` the collaborative part the co-visitation lists cannot express. Its
scores feed the ranker as features (:func:`taste_features`).

Deterministic: the factors start from a seeded generator and L-BFGS is deterministic, so the
same pairs give the same model bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamrec_assets.core.features import genre_codes

#: Latent dimensions, L2 penalty (on the sum of squared parameters) and optimiser iterations.
DEFAULT_FACTORS = 8
DEFAULT_L2 = 1.0
DEFAULT_MAX_ITER = 200
#: Features added to the ranker's rows (NaN for a user or item the model has not seen).
TASTE_FEATURES = ["taste_score", "taste_dot", "taste_item_bias", "taste_user_genre_bias"]
OUTCOME_COLUMNS = ["user_id", "item_id", "genre_code", "impressions", "positives"]


@dataclass
class TasteModel:
    """Fitted parameters: ``users`` (``user_id``, ``genre_bias_<g>``..., ``f<k>``...), ``items``
    (``item_id``, ``bias``, ``f<k>``...) and the global bias."""

    users: pd.DataFrame
    items: pd.DataFrame
    global_bias: float
    factors: int
    genres: int
    log_likelihood: float
    pairs: int
    impressions: int
    iterations: int

    @property
    def empty(self) -> bool:
        return self.users.empty or self.items.empty

    def scores(self, user_ids: np.ndarray, item_ids: np.ndarray, genre_codes: np.ndarray) -> pd.DataFrame:
        """:data:`TASTE_FEATURES` of element-wise (user, item, genre code) triples."""
        n = len(user_ids)
        out = {name: np.full(n, np.nan) for name in TASTE_FEATURES}
        if self.empty or n == 0:
            return pd.DataFrame(out)
        u_ids = self.users["user_id"].to_numpy()
        i_ids = self.items["item_id"].to_numpy()
        uid = np.asarray(user_ids, dtype="int64")
        iid = np.asarray(item_ids, dtype="int64")
        u = np.searchsorted(u_ids, uid).clip(max=len(u_ids) - 1)
        i = np.searchsorted(i_ids, iid).clip(max=len(i_ids) - 1)
        ok_u, ok_i = u_ids[u] == uid, i_ids[i] == iid
        g = np.asarray(pd.to_numeric(pd.Series(genre_codes), errors="coerce").fillna(-1), dtype="int64")
        ok_g = (g >= 0) & (g < self.genres)
        f_cols = [f"f{k}" for k in range(self.factors)]
        U = self.users[f_cols].to_numpy(dtype="float64")
        V = self.items[f_cols].to_numpy(dtype="float64")
        G = self.users[[f"genre_bias_{k}" for k in range(self.genres)]].to_numpy(dtype="float64")
        bias = self.items["bias"].to_numpy(dtype="float64")
        both = ok_u & ok_i
        out["taste_dot"][both] = np.einsum("ij,ij->i", U[u[both]], V[i[both]])
        out["taste_item_bias"][ok_i] = bias[i[ok_i]]
        ug = ok_u & ok_g
        out["taste_user_genre_bias"][ug] = G[u[ug], g[ug]]
        full = both & ok_g
        out["taste_score"][full] = (
            self.global_bias + out["taste_item_bias"][full] + out["taste_user_genre_bias"][full] + out["taste_dot"][full]
        )
        return pd.DataFrame(out)


def outcomes_of_day(examples: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """A day's labelled impressions (:func:`~streamrec_assets.core.training.label_impressions`)
    per (user, item): ``impressions``, ``positives`` (played), ``completions`` and the item's
    genre code (its index among the catalogue's sorted genres; -1 unknown)."""
    if examples.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in [*OUTCOME_COLUMNS, "completions"]}).assign(
            date=pd.Series(dtype=object)
        )[["date", *OUTCOME_COLUMNS, "completions"]]
    frame = examples.assign(
        positives=(examples["label"] > 0).astype("int64"), completions=(examples["label"] == 2).astype("int64")
    )
    out = frame.groupby(["date", "user_id", "item_id"], as_index=False, sort=True).agg(
        impressions=("label", "size"), positives=("positives", "sum"), completions=("completions", "sum")
    )
    code = out["item_id"].map(items.set_index("item_id")["genre"]).map(genre_codes(items))
    out["genre_code"] = code.fillna(-1).astype("int64")
    out["date"] = out["date"].astype(str).astype(object)
    return out[["date", *OUTCOME_COLUMNS, "completions"]].astype(
        {c: "int64" for c in ["user_id", "item_id", "genre_code", "impressions", "positives", "completions"]}
    )


def fit_taste(
    outcomes: pd.DataFrame,
    genres: int,
    factors: int = DEFAULT_FACTORS,
    l2: float = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
    seed: int = 0,
) -> TasteModel:
    """Fit the model on ``outcomes`` (rows of ``user_id, item_id, genre_code, impressions,
    positives``; the same pair on several days is summed)."""
    from scipy.optimize import minimize

    cols = ["user_id", "item_id", "genre_code"]
    pairs = outcomes.groupby(cols, as_index=False, sort=True)[["impressions", "positives"]].sum()
    pairs = pairs[(pairs["impressions"] > 0) & (pairs["genre_code"] >= 0)]
    if pairs.empty:
        return _empty_model(factors, genres)
    u_ids, ui = np.unique(pairs["user_id"].to_numpy(), return_inverse=True)
    i_ids, ii = np.unique(pairs["item_id"].to_numpy(), return_inverse=True)
    g = pairs["genre_code"].to_numpy().astype("int64")
    n = pairs["impressions"].to_numpy(dtype="float64")
    y = pairs["positives"].to_numpy(dtype="float64").clip(max=n)
    nu, ni, k = len(u_ids), len(i_ids), int(factors)
    ug_index = ui * genres + g
    sizes = (1, ni, nu * genres, nu * k, ni * k)
    offsets = np.cumsum((0, *sizes))

    def unpack(x: np.ndarray):
        parts = [x[offsets[j] : offsets[j + 1]] for j in range(len(sizes))]
        return parts[0][0], parts[1], parts[2], parts[3].reshape(nu, k), parts[4].reshape(ni, k)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        b, bi, ug, U, V = unpack(x)
        z = b + bi[ii] + ug[ug_index] + np.einsum("ij,ij->i", U[ui], V[ii])
        # binomial negative log-likelihood: n log(1 + e^z) - y z
        loss = float(np.sum(n * np.logaddexp(0.0, z) - y * z))
        r = n / (1.0 + np.exp(-z)) - y  # d loss / d z
        reg = [bi, ug, U, V]
        loss += l2 * float(sum(np.sum(p * p) for p in reg))
        g_u = np.stack([np.bincount(ui, r * V[ii, j], minlength=nu) for j in range(k)], axis=1)
        g_v = np.stack([np.bincount(ii, r * U[ui, j], minlength=ni) for j in range(k)], axis=1)
        grad = np.concatenate(
            [
                [r.sum()],
                np.bincount(ii, r, minlength=ni) + 2 * l2 * bi,
                np.bincount(ug_index, r, minlength=nu * genres) + 2 * l2 * ug,
                (g_u + 2 * l2 * U).ravel(),
                (g_v + 2 * l2 * V).ravel(),
            ]
        )
        return loss, grad

    rng = np.random.default_rng(seed)
    x0 = np.zeros(offsets[-1])
    x0[0] = np.log((y.sum() + 1.0) / (n.sum() - y.sum() + 1.0))
    x0[offsets[3] :] = rng.normal(0.0, 0.1, size=offsets[-1] - offsets[3])
    result = minimize(objective, x0, jac=True, method="L-BFGS-B", options={"maxiter": int(max_iter)})
    b, bi, ug, U, V = unpack(result.x)
    users = pd.DataFrame({"user_id": u_ids.astype("int64")})
    for j in range(genres):
        users[f"genre_bias_{j}"] = ug.reshape(nu, genres)[:, j]
    for j in range(k):
        users[f"f{j}"] = U[:, j]
    items = pd.DataFrame({"item_id": i_ids.astype("int64"), "bias": bi})
    for j in range(k):
        items[f"f{j}"] = V[:, j]
    return TasteModel(
        users=users,
        items=items,
        global_bias=float(b),
        factors=k,
        genres=int(genres),
        log_likelihood=-float(result.fun),
        pairs=len(pairs),
        impressions=int(n.sum()),
        iterations=int(result.nit),
    )


def _empty_model(factors: int, genres: int) -> TasteModel:
    users = pd.DataFrame({"user_id": pd.Series(dtype="int64")})
    for j in range(genres):
        users[f"genre_bias_{j}"] = pd.Series(dtype="float64")
    items = pd.DataFrame({"item_id": pd.Series(dtype="int64"), "bias": pd.Series(dtype="float64")})
    for j in range(factors):
        users[f"f{j}"] = pd.Series(dtype="float64")
        items[f"f{j}"] = pd.Series(dtype="float64")
    return TasteModel(users, items, 0.0, int(factors), int(genres), 0.0, 0, 0, 0)
