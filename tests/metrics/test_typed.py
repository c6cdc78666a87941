import warnings

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from nucleiseg.metrics.typed import TypedMetrics, class_key, typed_image_counts, typed_scores

CONIC_CLASSES = ["epithelial", "lymphocyte", "plasma", "neutrophil", "eosinophil", "connective"]
PANNUKE_CLASSES = ["Neoplastic", "Inflammatory", "Connective", "Dead", "Non-Neoplastic Epithelial"]
# the references divide by (x + 1e-6); we divide exactly: at most 2e-6 relative apart, 1e-7 where nothing is matched
REFERENCE_EPSILON = {"rel": 2e-6, "abs": 1e-7, "nan_ok": True}


# ------------------------------------------------------------------------------------------------------------------
# Oracles, transcribed with their file reading replaced by arrays and unused branches (remap_label's by_size,
# get_fast_pq's match_iou < 0.5) left out; otherwise unchanged but for comments and line breaks.
#
# CoNIC: TissueImageAnalytics/CoNIC at c1c4964 (2024-02-19), misc/utils.py (remap_label, get_bounding_box),
# metrics/stats_utils.py (get_pq, get_multi_pq_info, get_multi_r2) and the "seg_class" block of compute_stats.py.
# The repository has no licence file; used here as a test oracle only.
# ------------------------------------------------------------------------------------------------------------------
def conic_remap_label(pred, by_size=False):
    pred_id = list(np.unique(pred))
    pred_id.remove(0)
    if len(pred_id) == 0:
        return pred  # no label
    new_pred = np.zeros(pred.shape, np.int32)
    for idx, inst_id in enumerate(pred_id):
        new_pred[pred == inst_id] = idx + 1
    return new_pred


def conic_get_bounding_box(img):
    rows = np.any(img, axis=1)
    cols = np.any(img, axis=0)
    rmin, rmax = np.where(rows)[0][[0, -1]]
    cmin, cmax = np.where(cols)[0][[0, -1]]
    rmax += 1
    cmax += 1
    return [rmin, rmax, cmin, cmax]


def conic_get_pq(true, pred, match_iou=0.5, remap=True):  # noqa: C901 (as written upstream)
    assert match_iou >= 0.0, "Cant' be negative"
    if remap:
        pred = conic_remap_label(pred)
        true = conic_remap_label(true)
    true = np.copy(true)
    pred = np.copy(pred)
    true = true.astype("int32")
    pred = pred.astype("int32")
    true_id_list = list(np.unique(true))
    pred_id_list = list(np.unique(pred))
    pairwise_iou = np.zeros([len(true_id_list), len(pred_id_list)], dtype=np.float64)
    for true_id in true_id_list[1:]:  # 0-th is background
        t_mask_lab = true == true_id
        rmin1, rmax1, cmin1, cmax1 = conic_get_bounding_box(t_mask_lab)
        t_mask_crop = t_mask_lab[rmin1:rmax1, cmin1:cmax1]
        t_mask_crop = t_mask_crop.astype("int")
        p_mask_crop = pred[rmin1:rmax1, cmin1:cmax1]
        pred_true_overlap = p_mask_crop[t_mask_crop > 0]
        pred_true_overlap_id = np.unique(pred_true_overlap)
        pred_true_overlap_id = list(pred_true_overlap_id)
        for pred_id in pred_true_overlap_id:
            if pred_id == 0:  # ignore
                continue  # overlaping background
            p_mask_lab = pred == pred_id
            p_mask_lab = p_mask_lab.astype("int")
            rmin2, rmax2, cmin2, cmax2 = conic_get_bounding_box(p_mask_lab)
            rmin = min(rmin1, rmin2)
            rmax = max(rmax1, rmax2)
            cmin = min(cmin1, cmin2)
            cmax = max(cmax1, cmax2)
            t_mask_crop2 = t_mask_lab[rmin:rmax, cmin:cmax]
            p_mask_crop2 = p_mask_lab[rmin:rmax, cmin:cmax]
            total = (t_mask_crop2 + p_mask_crop2).sum()
            inter = (t_mask_crop2 * p_mask_crop2).sum()
            iou = inter / (total - inter)
            pairwise_iou[true_id - 1, pred_id - 1] = iou
    if match_iou >= 0.5:
        paired_iou = pairwise_iou[pairwise_iou > match_iou]
        pairwise_iou[pairwise_iou <= match_iou] = 0.0
        paired_true, paired_pred = np.nonzero(pairwise_iou)
        paired_iou = pairwise_iou[paired_true, paired_pred]
        paired_true += 1
        paired_pred += 1
    else:
        paired_true, paired_pred = linear_sum_assignment(-pairwise_iou)
        paired_iou = pairwise_iou[paired_true, paired_pred]
        paired_true = list(paired_true[paired_iou > match_iou] + 1)
        paired_pred = list(paired_pred[paired_iou > match_iou] + 1)
        paired_iou = paired_iou[paired_iou > match_iou]
    unpaired_true = [idx for idx in true_id_list[1:] if idx not in paired_true]
    unpaired_pred = [idx for idx in pred_id_list[1:] if idx not in paired_pred]
    tp = len(paired_true)
    fp = len(unpaired_pred)
    fn = len(unpaired_true)
    dq = tp / ((tp + 0.5 * fp + 0.5 * fn) + 1.0e-6)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return ([dq, sq, dq * sq], [tp, fp, fn], paired_iou.sum())


def conic_get_multi_pq_info(true, pred, nr_classes=6, match_iou=0.5):
    assert match_iou >= 0.0, "Cant' be negative"
    true_inst = true[..., 0]
    pred_inst = pred[..., 0]
    true_class = true[..., 1]
    pred_class = pred[..., 1]
    pq = []
    for idx in range(nr_classes):
        pred_class_tmp = pred_class == idx + 1
        pred_inst_oneclass = pred_inst * pred_class_tmp
        pred_inst_oneclass = conic_remap_label(pred_inst_oneclass)
        true_class_tmp = true_class == idx + 1
        true_inst_oneclass = true_inst * true_class_tmp
        true_inst_oneclass = conic_remap_label(true_inst_oneclass)
        pq_oneclass_info = conic_get_pq(true_inst_oneclass, pred_inst_oneclass, remap=False)
        pq_oneclass_stats = [
            pq_oneclass_info[1][0],
            pq_oneclass_info[1][1],
            pq_oneclass_info[1][2],
            pq_oneclass_info[2],
        ]
        pq.append(pq_oneclass_stats)
    return pq


def conic_compute_stats_multi_pq(true_array, pred_array):
    """compute_stats.py, mode "seg_class", metric "multi_pq+"; returns (mPQ+, per-image info, pooled totals)."""
    mpq_info_list = []
    for patch_idx in range(pred_array.shape[0]):
        pred = pred_array[patch_idx]
        true = true_array[patch_idx]
        mpq_info_single = conic_get_multi_pq_info(true, pred)
        mpq_info = []
        for single_class_pq in mpq_info_single:
            tp = single_class_pq[0]
            fp = single_class_pq[1]
            fn = single_class_pq[2]
            sum_iou = single_class_pq[3]
            mpq_info.append([tp, fp, fn, sum_iou])
        mpq_info_list.append(mpq_info)
    mpq_info_metrics = np.array(mpq_info_list, dtype="float")
    total_mpq_info_metrics = np.sum(mpq_info_metrics, axis=0)
    mpq_list = []
    for cat_idx in range(total_mpq_info_metrics.shape[0]):
        total_tp = total_mpq_info_metrics[cat_idx][0]
        total_fp = total_mpq_info_metrics[cat_idx][1]
        total_fn = total_mpq_info_metrics[cat_idx][2]
        total_sum_iou = total_mpq_info_metrics[cat_idx][3]
        dq = total_tp / ((total_tp + 0.5 * total_fp + 0.5 * total_fn) + 1.0e-6)
        sq = total_sum_iou / (total_tp + 1.0e-6)
        mpq_list.append(dq * sq)
    mpq_metrics = np.array(mpq_list)
    return np.mean(mpq_metrics), mpq_info_metrics, total_mpq_info_metrics


def conic_get_multi_r2(true, pred):
    from sklearn.metrics import r2_score

    class_names = ["epithelial", "lymphocyte", "plasma", "neutrophil", "eosinophil", "connective"]
    for col in true.columns:
        if col not in class_names:
            raise ValueError("%s column header not recognised")
    for col in pred.columns:
        if col not in class_names:
            raise ValueError("%s column header not recognised")
    r2_list = []
    for class_ in class_names:
        true_oneclass = true[class_].tolist()
        pred_oneclass = pred[class_].tolist()
        r2_list.append(r2_score(true_oneclass, pred_oneclass))
    return np.mean(np.array(r2_list))


# ------------------------------------------------------------------------------------------------------------------
# PanNuke: TissueImageAnalytics/PanNuke-metrics at c00014d (2020-10-20), utils.py (get_fast_pq, remap_label,
# binarize) and run.py (main, from the loop over images to the means; the CSV writing is left out: it stores the
# connective PQ in the inflammatory row). No licence file in the repository; used here as a test oracle only.
# ------------------------------------------------------------------------------------------------------------------
def pannuke_get_fast_pq(true, pred, match_iou=0.5):
    assert match_iou >= 0.0, "Cant' be negative"
    true = np.copy(true)
    pred = np.copy(pred)
    true_id_list = list(np.unique(true))
    pred_id_list = list(np.unique(pred))
    true_masks = [None]
    for t in true_id_list[1:]:
        t_mask = np.array(true == t, np.uint8)
        true_masks.append(t_mask)
    pred_masks = [None]
    for p in pred_id_list[1:]:
        p_mask = np.array(pred == p, np.uint8)
        pred_masks.append(p_mask)
    pairwise_iou = np.zeros([len(true_id_list) - 1, len(pred_id_list) - 1], dtype=np.float64)
    for true_id in true_id_list[1:]:
        t_mask = true_masks[true_id]
        pred_true_overlap = pred[t_mask > 0]
        pred_true_overlap_id = np.unique(pred_true_overlap)
        pred_true_overlap_id = list(pred_true_overlap_id)
        for pred_id in pred_true_overlap_id:
            if pred_id == 0:
                continue
            p_mask = pred_masks[pred_id]
            total = (t_mask + p_mask).sum()
            inter = (t_mask * p_mask).sum()
            iou = inter / (total - inter)
            pairwise_iou[true_id - 1, pred_id - 1] = iou
    paired_iou = pairwise_iou[pairwise_iou > match_iou]  # match_iou >= 0.5 branch only (the default)
    pairwise_iou[pairwise_iou <= match_iou] = 0.0
    paired_true, paired_pred = np.nonzero(pairwise_iou)
    paired_iou = pairwise_iou[paired_true, paired_pred]
    paired_true += 1
    paired_pred += 1
    unpaired_true = [idx for idx in true_id_list[1:] if idx not in paired_true]
    unpaired_pred = [idx for idx in pred_id_list[1:] if idx not in paired_pred]
    tp = len(paired_true)
    fp = len(unpaired_pred)
    fn = len(unpaired_true)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return [dq, sq, dq * sq], [paired_true, paired_pred, unpaired_true, unpaired_pred]


pannuke_remap_label = conic_remap_label  # the two files hold the same function


def pannuke_binarize(x):
    out = np.zeros([x.shape[0], x.shape[1]])
    count = 1
    for i in range(x.shape[2]):
        x_ch = x[:, :, i]
        unique_vals = np.unique(x_ch)
        unique_vals = unique_vals.tolist()
        unique_vals.remove(0)
        for j in unique_vals:
            x_tmp = x_ch == j
            x_tmp_c = 1 - x_tmp
            out *= x_tmp_c
            out += count * x_tmp
            count += 1
    out = out.astype("int32")
    return out


PANNUKE_TISSUES = ["Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck"]
PANNUKE_TISSUES += ["Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis"]
PANNUKE_TISSUES += ["Thyroid", "Uterus"]


def pannuke_run_main(true, pred, types):  # noqa: C901
    """run.py main on arrays ``N x H x W x 6``; returns (PQ of the 5 classes, average mPQ, average bPQ)."""
    mPQ_all = []  # noqa: N806 (upstream names)
    bPQ_all = []  # noqa: N806
    for i in range(true.shape[0]):
        pq = []
        pred_bin = pannuke_binarize(pred[i, :, :, :5])
        true_bin = pannuke_binarize(true[i, :, :, :5])
        if len(np.unique(true_bin)) == 1:
            pq_bin = np.nan
        else:
            [_, _, pq_bin], _ = pannuke_get_fast_pq(true_bin, pred_bin)
        for j in range(5):
            pred_tmp = pred[i, :, :, j]
            pred_tmp = pred_tmp.astype("int32")
            true_tmp = true[i, :, :, j]
            true_tmp = true_tmp.astype("int32")
            pred_tmp = pannuke_remap_label(pred_tmp)
            true_tmp = pannuke_remap_label(true_tmp)
            if len(np.unique(true_tmp)) == 1:
                pq_tmp = np.nan
            else:
                [_, _, pq_tmp], _ = pannuke_get_fast_pq(true_tmp, pred_tmp)
            pq.append(pq_tmp)
        mPQ_all.append(pq)
        bPQ_all.append([pq_bin])
    mPQ_each_image = [np.nanmean(pq) for pq in mPQ_all]  # noqa: N806
    bPQ_each_image = [np.nanmean(pq_bin) for pq_bin in bPQ_all]  # noqa: N806
    class_pq = [np.nanmean([pq[j] for pq in mPQ_all]) for j in range(5)]  # neo_PQ, inflam_PQ, ... in order
    all_tissue_mPQ = []  # noqa: N806
    all_tissue_bPQ = []  # noqa: N806
    for tissue_name in PANNUKE_TISSUES:
        indices = [i for i, x in enumerate(types) if x == tissue_name]
        tissue_PQ = [mPQ_each_image[i] for i in indices]  # noqa: N806
        tissue_PQ_bin = [bPQ_each_image[i] for i in indices]  # noqa: N806
        all_tissue_mPQ.append(np.nanmean(tissue_PQ))
        all_tissue_bPQ.append(np.nanmean(tissue_PQ_bin))
    return class_pq, np.nanmean(all_tissue_mPQ), np.nanmean(all_tissue_bPQ)


# ------------------------------------------------------------------------------------------------------------------
# HoVer-Net: vqdang/hover_net at 67e2ce5 (2023-10-27), MIT licence, metrics/stats_utils.py (pair_coordinates) and
# compute_stats.py (run_nuclei_type_stat; the .mat reading replaced by a list of (true centroids, true types,
# predicted centroids, predicted types) per image; returns results_list instead of printing it).
# ------------------------------------------------------------------------------------------------------------------
def hover_net_pair_coordinates(setA, setB, radius):  # noqa: N803
    pair_distance = cdist(setA, setB, metric="euclidean")
    indicesA, paired_indicesB = linear_sum_assignment(pair_distance)  # noqa: N806
    pair_cost = pair_distance[indicesA, paired_indicesB]
    pairedA = indicesA[pair_cost <= radius]  # noqa: N806
    pairedB = paired_indicesB[pair_cost <= radius]  # noqa: N806
    pairing = np.concatenate([pairedA[:, None], pairedB[:, None]], axis=-1)
    unpairedA = np.delete(np.arange(setA.shape[0]), pairedA)  # noqa: N806
    unpairedB = np.delete(np.arange(setB.shape[0]), pairedB)  # noqa: N806
    return pairing, unpairedA, unpairedB


def hover_net_run_nuclei_type_stat(images, type_uid_list=None, exhaustive=True, radius=12):  # noqa: C901
    paired_all = []
    unpaired_true_all = []
    unpaired_pred_all = []
    true_inst_type_all = []
    pred_inst_type_all = []
    for file_idx, (true_centroid, true_inst_type, pred_centroid, pred_inst_type) in enumerate(images):
        true_centroid = np.asarray(true_centroid).reshape(-1, 2).astype("float32")
        true_inst_type = np.asarray(true_inst_type).reshape(-1, 1).astype("int32")
        if true_centroid.shape[0] != 0:
            true_inst_type = true_inst_type[:, 0]
        else:  # no instance at all
            true_centroid = np.array([[0, 0]])
            true_inst_type = np.array([0])
        pred_centroid = np.asarray(pred_centroid).reshape(-1, 2).astype("float32")
        pred_inst_type = np.asarray(pred_inst_type).reshape(-1, 1).astype("int32")
        if pred_centroid.shape[0] != 0:
            pred_inst_type = pred_inst_type[:, 0]
        else:  # no instance at all
            pred_centroid = np.array([[0, 0]])
            pred_inst_type = np.array([0])
        paired, unpaired_true, unpaired_pred = hover_net_pair_coordinates(true_centroid, pred_centroid, radius)
        true_idx_offset = true_idx_offset + true_inst_type_all[-1].shape[0] if file_idx != 0 else 0  # noqa: F821
        pred_idx_offset = pred_idx_offset + pred_inst_type_all[-1].shape[0] if file_idx != 0 else 0  # noqa: F821
        true_inst_type_all.append(true_inst_type)
        pred_inst_type_all.append(pred_inst_type)
        if paired.shape[0] != 0:
            paired[:, 0] += true_idx_offset
            paired[:, 1] += pred_idx_offset
            paired_all.append(paired)
        unpaired_true += true_idx_offset
        unpaired_pred += pred_idx_offset
        unpaired_true_all.append(unpaired_true)
        unpaired_pred_all.append(unpaired_pred)
    paired_all = np.concatenate(paired_all, axis=0)
    unpaired_true_all = np.concatenate(unpaired_true_all, axis=0)
    unpaired_pred_all = np.concatenate(unpaired_pred_all, axis=0)
    true_inst_type_all = np.concatenate(true_inst_type_all, axis=0)
    pred_inst_type_all = np.concatenate(pred_inst_type_all, axis=0)
    paired_true_type = true_inst_type_all[paired_all[:, 0]]
    paired_pred_type = pred_inst_type_all[paired_all[:, 1]]
    unpaired_true_type = true_inst_type_all[unpaired_true_all]
    unpaired_pred_type = pred_inst_type_all[unpaired_pred_all]

    def _f1_type(paired_true, paired_pred, unpaired_true, unpaired_pred, type_id, w):
        type_samples = (paired_true == type_id) | (paired_pred == type_id)
        paired_true = paired_true[type_samples]
        paired_pred = paired_pred[type_samples]
        tp_dt = ((paired_true == type_id) & (paired_pred == type_id)).sum()
        tn_dt = ((paired_true != type_id) & (paired_pred != type_id)).sum()
        fp_dt = ((paired_true != type_id) & (paired_pred == type_id)).sum()
        fn_dt = ((paired_true == type_id) & (paired_pred != type_id)).sum()
        if not exhaustive:
            ignore = (paired_true == -1).sum()
            fp_dt -= ignore
        fp_d = (unpaired_pred == type_id).sum()
        fn_d = (unpaired_true == type_id).sum()
        f1_type = (2 * (tp_dt + tn_dt)) / (
            2 * (tp_dt + tn_dt) + w[0] * fp_dt + w[1] * fn_dt + w[2] * fp_d + w[3] * fn_d
        )
        return f1_type

    w = [1, 1]
    tp_d = paired_pred_type.shape[0]
    fp_d = unpaired_pred_type.shape[0]
    fn_d = unpaired_true_type.shape[0]
    tp_tn_dt = (paired_pred_type == paired_true_type).sum()
    fp_fn_dt = (paired_pred_type != paired_true_type).sum()
    if not exhaustive:
        ignore = (paired_true_type == -1).sum()
        fp_fn_dt -= ignore
    acc_type = tp_tn_dt / (tp_tn_dt + fp_fn_dt)
    f1_d = 2 * tp_d / (2 * tp_d + w[0] * fp_d + w[1] * fn_d)
    w = [2, 2, 1, 1]
    if type_uid_list is None:
        type_uid_list = np.unique(true_inst_type_all).tolist()
    results_list = [f1_d, acc_type]
    for type_uid in type_uid_list:
        f1_type = _f1_type(paired_true_type, paired_pred_type, unpaired_true_type, unpaired_pred_type, type_uid, w)
        results_list.append(f1_type)
    return results_list


# ------------------------------------------------------------------------------------------------------------------
# Synthetic typed nuclei
# ------------------------------------------------------------------------------------------------------------------
def disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def class_map(labels, types):
    """Class per pixel ``int HxW`` from labels and ``{label: class}``."""
    lookup = np.zeros(int(labels.max()) + 1, np.int32)
    for label, value in types.items():
        if label < len(lookup):
            lookup[label] = value
    return lookup[labels]


def random_image(rng, n_classes, shape=(48, 48)):
    """Discs of random classes (labels with gaps); the prediction shifts, resizes, drops, merges, relabels some
    nuclei, changes some classes and adds a few nuclei of its own. Returns (truth, true types, pred, pred types)."""
    truth, true_types = np.zeros(shape, np.int32), {}
    centres, radii = rng.integers(5, shape[0] - 5, size=(8, 2)), rng.integers(3, 7, 8)
    for k in range(int(rng.integers(1, 9))):
        truth[disc(shape, centres[k], radii[k])] = 3 * k + 2
        true_types[3 * k + 2] = int(rng.integers(1, n_classes + 1))
    prediction, predicted_types, label = np.zeros(shape, np.int32), {}, 0
    for k, (centre, radius) in enumerate(zip(centres, radii, strict=True)):
        if 3 * k + 2 not in true_types or rng.random() < 0.15:
            continue  # absent or missed
        if label == 0 or rng.random() > 0.15:  # else merged into the previous prediction
            label += int(rng.integers(1, 4))
            keep = rng.random() < 0.7
            predicted_types[label] = true_types[3 * k + 2] if keep else int(rng.integers(1, n_classes + 1))
        prediction[disc(shape, centre + rng.integers(-4, 5, 2), radius + rng.integers(-1, 2))] = label
    for _ in range(int(rng.integers(0, 3))):  # invented nuclei
        label += 1
        prediction[disc(shape, rng.integers(4, shape[0] - 4, 2), rng.integers(3, 6))] = label
        predicted_types[label] = int(rng.integers(1, n_classes + 1))
    return truth, true_types, prediction, predicted_types


def random_dataset(seed, n_classes, n_images=8):
    rng = np.random.default_rng(seed)
    return [random_image(rng, n_classes) for _ in range(n_images)]


def hover_net_points(labels, types):
    """HoVer-Net's (centroids X, Y from cv2.moments, types) in label order, as its post-processing writes them."""
    cv2 = pytest.importorskip("cv2")
    ids = [int(i) for i in np.unique(labels) if i != 0]
    moments = [cv2.moments((labels == i).astype(np.uint8)) for i in ids]
    points = [[m["m10"] / m["m00"], m["m01"] / m["m00"]] for m in moments]
    return np.array(points).reshape(-1, 2), np.array([types[i] for i in ids])


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def conic_arrays(dataset):
    """CoNIC's ``N x H x W x 2`` (instances, classes) for the truth and the prediction."""
    true = np.stack([np.stack([t, class_map(t, tt)], axis=-1) for t, tt, _, _ in dataset])
    pred = np.stack([np.stack([p, class_map(p, pt)], axis=-1) for _, _, p, pt in dataset])
    return true, pred


def pannuke_array(labels, types):
    """PanNuke's ``H x W x 6``: instance labels of each of the 5 classes, then the background."""
    classes = class_map(labels, types)
    return np.stack([labels * (classes == j + 1) for j in range(5)] + [labels == 0], axis=-1)


EMPTY = np.zeros((48, 48), np.int32)
ONLY_PREDICTED = (EMPTY, {}, disc((48, 48), (20, 20), 5).astype(np.int32), {1: 2})


# ------------------------------------------------------------------------------------------------------------------
# Hand-made cases
# ------------------------------------------------------------------------------------------------------------------
SHAPE = (40, 40)
CENTRES = [(8, 8), (8, 30), (30, 8), (30, 30), (20, 20)]  # radius-4 discs, 12 px or more apart


def five_nuclei(types=(1, 1, 2, 2, 3), keep=(1, 2, 3, 4, 5)):
    labels = np.zeros(SHAPE, np.int32)
    for k in keep:
        labels[disc(SHAPE, CENTRES[k - 1], 4)] = k
    return labels, {k: types[k - 1] for k in keep}


def test_a_perfect_prediction_scores_one_everywhere():
    truth, types = five_nuclei()
    scores = typed_scores([(truth, types, truth, types)], ["Tumour", "Lymphocyte", "Other cell"], radius=12)
    for key in ("mpq_plus", "pannuke_mpq", "pannuke_bpq", "f_d", "type_accuracy", "pq_other_cell", "f_c_tumour"):
        assert scores[key] == 1.0, key
    assert scores["n_true_tumour"] == scores["n_predicted_tumour"] == 2 and scores["n_true_other_cell"] == 1
    assert np.isnan(scores["multi_r2"])  # R² needs two images at least, as scikit-learn's r2_score


def test_swapping_one_class_lowers_exactly_the_two_classes():
    truth, types = five_nuclei()
    predicted_types = {**types, 1: 2}  # nucleus 1 (class a) predicted as class b
    scores = typed_scores([(truth, types, truth, predicted_types)], ["a", "b", "c"], radius=12)
    # a: TP 1, FN 1 -> DQ 1/1.5; b: TP 2, FP 1 -> DQ 2/2.5; the masks are perfect, so SQ = 1
    assert scores["pq_a"] == pytest.approx(2 / 3) and scores["dq_a"] == pytest.approx(2 / 3) and scores["sq_a"] == 1
    assert scores["pq_b"] == pytest.approx(0.8) and scores["pq_c"] == 1.0
    assert scores["mpq_plus"] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert scores["pannuke_mpq"] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert scores["pannuke_pq_a"] == pytest.approx(2 / 3) and scores["pannuke_pq_b"] == pytest.approx(0.8)
    assert scores["pannuke_bpq"] == 1.0 and scores["f_d"] == 1.0 and scores["type_accuracy"] == pytest.approx(4 / 5)
    # F_c = 2 TP / (2 TP + 2 FP_paired + 2 FN_paired + FP_unpaired + FN_unpaired): a 2/(2+2), b 4/(4+2)
    assert scores["f_c_a"] == pytest.approx(0.5) and scores["f_c_b"] == pytest.approx(2 / 3) and scores["f_c_c"] == 1
    assert scores["n_true_a"] == 2 and scores["n_predicted_a"] == 1 and scores["n_predicted_b"] == 3


def test_classes_on_one_side_only_and_nowhere():
    truth, types = five_nuclei()
    prediction, predicted_types = five_nuclei(keep=(1, 2, 3, 4))  # the class-c nucleus is missed
    prediction[disc(SHAPE, (20, 36), 4)] = 9  # and a class-d nucleus invented 16 px from it
    predicted_types[9] = 4
    scores = typed_scores([(truth, types, prediction, predicted_types)], ["a", "b", "c", "d", "e"], radius=12)
    assert scores["pq_c"] == 0.0 and scores["pannuke_pq_c"] == 0.0 and scores["f_c_c"] == 0.0  # truth only
    assert scores["pq_d"] == 0.0 and np.isnan(scores["pannuke_pq_d"]) and scores["f_c_d"] == 0.0  # prediction only
    assert scores["pq_e"] == 0.0 and np.isnan(scores["pannuke_pq_e"]) and np.isnan(scores["f_c_e"])  # nowhere
    # CoNIC averages all five classes; PanNuke only those with true nuclei in the image (a, b, c)
    assert scores["mpq_plus"] == pytest.approx(2 / 5) and scores["pannuke_mpq"] == pytest.approx(2 / 3)
    assert scores["f_d"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1)) and scores["type_accuracy"] == 1.0


def test_pooled_per_image_and_per_class_means_differ():
    """Image 1: one class-a nucleus, found. Image 2: one nucleus of each class, only the class-c one found."""
    first, first_types = five_nuclei(keep=(1,))
    second, second_types = five_nuclei(types=(1, 1, 2, 2, 3), keep=(1, 3, 5))
    found, found_types = five_nuclei(keep=(5,))
    pairs = [(first, first_types, first, first_types), (second, second_types, found, found_types)]
    scores = typed_scores(pairs, ["a", "b", "c"], radius=12)
    # CoNIC pools: a TP 1 FN 1 -> 2/3, b FN 1 -> 0, c 1
    assert scores["mpq_plus"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    # PanNuke: image PQs a 1 | a 0, b 0, c 1 -> classes a 0.5, b 0, c 1; mPQ = mean of image means (1 + 1/3) / 2
    assert [scores[f"pannuke_pq_{c}"] for c in "abc"] == pytest.approx([0.5, 0.0, 1.0])
    assert scores["pannuke_mpq"] == pytest.approx(2 / 3)
    # bPQ: image 1 is 1; image 2 finds 1 of 3 -> DQ 1/2
    assert scores["pannuke_bpq"] == pytest.approx((1 + 0.5) / 2)


def test_pannuke_averages_per_tissue_then_over_tissues():
    truth, types = five_nuclei()
    missed = (truth, types, EMPTY[:40, :40], {})
    perfect = (truth, types, truth, types)
    swapped = (truth, types, truth, {**types, 1: 2})
    pairs = [perfect, swapped, missed]
    swapped_mpq = (2 / 3 + 0.8 + 1) / 3
    assert typed_scores(pairs, "abc", 12)["pannuke_mpq"] == pytest.approx((1 + swapped_mpq + 0) / 3)
    by_tissue = typed_scores(pairs, "abc", 12, tissues=["Breast", "Breast", "Colon"])
    assert by_tissue["pannuke_mpq"] == pytest.approx(((1 + swapped_mpq) / 2 + 0) / 2)
    assert by_tissue["pannuke_bpq"] == pytest.approx(((1 + 1) / 2 + 0) / 2)


def test_multi_r2_of_counts_by_hand():
    one, one_types = five_nuclei(keep=(1, 3))  # a 1, b 1
    three, three_types = five_nuclei(keep=(1, 2, 3))  # a 2, b 1
    scores = typed_scores([(one, one_types, three, three_types), (three, three_types, three, three_types)], "ab", 12)
    # a: true (1, 2), predicted (2, 2): 1 - 1 / 0.5 = -1; b: true (1, 1) constant, predicted exactly -> 1
    assert scores["r2_a"] == pytest.approx(-1.0) and scores["r2_b"] == 1.0
    assert scores["multi_r2"] == pytest.approx(0.0)


def test_empty_images():
    empty = typed_scores([(EMPTY, {}, EMPTY, {})], ["a", "b"], radius=12)
    assert empty["mpq_plus"] == 0.0 and empty["pq_a"] == 0.0  # CoNIC's value: its 1e-6 guards give 0
    assert all(np.isnan(empty[k]) for k in ("pannuke_mpq", "pannuke_bpq", "f_d", "type_accuracy", "f_c_a"))
    assert empty["n_true_a"] == empty["n_predicted_b"] == 0
    truth, types = five_nuclei(types=(1, 2, 1, 2, 1))
    base = typed_scores([(truth, types, truth, {**types, 1: 2})], ["a", "b"], radius=12)
    padded = typed_scores([(truth, types, truth, {**types, 1: 2}), (EMPTY, {}, EMPTY, {})], ["a", "b"], radius=12)
    assert {k: v for k, v in padded.items() if "r2" not in k} == {k: v for k, v in base.items() if "r2" not in k}
    invented = typed_scores([(truth, types, truth, types), ONLY_PREDICTED], ["a", "b"], radius=12)
    assert invented["pq_b"] == pytest.approx(2 / 2.5) and invented["pannuke_pq_b"] == 1.0  # PanNuke skips the image
    assert invented["f_d"] == pytest.approx(10 / 11) and invented["pannuke_bpq"] == 1.0


def test_hover_net_pairs_within_the_radius_inclusive():
    truth = disc((40, 40), (20, 8), 3).astype(np.int32)
    shifted = disc((40, 40), (20, 20), 3).astype(np.int32)  # centroid 12 px away, no overlap
    pairs = [(truth, {1: 1}, shifted, {1: 1})]
    assert typed_scores(pairs, ["a"], radius=12)["f_d"] == 1.0 and typed_scores(pairs, ["a"], radius=11.9)["f_d"] == 0
    assert typed_scores(pairs, ["a"], radius=12)["pq_a"] == 0.0


def test_hover_net_stand_in_for_an_empty_image_is_not_reproduced():
    """Their run_nuclei_type_stat gives an image without nuclei one of type 0 at (0, 0); we count nothing there."""
    truth, types = five_nuclei(keep=(1, 2))
    invented = disc(SHAPE, (30, 30), 4).astype(np.int32)
    ours = typed_scores([(truth, types, truth, types), (EMPTY[:40, :40], {}, invented, {1: 1})], "ab", 12)
    assert ours["f_d"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    points = [(*hover_net_points(truth, types), *hover_net_points(truth, types))]
    points.append((*hover_net_points(EMPTY, {}), *hover_net_points(invented, {1: 1})))
    assert quiet(hover_net_run_nuclei_type_stat, points, [1, 2])[0] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_inputs_as_class_maps_and_their_errors():
    truth, types = five_nuclei()
    as_maps = typed_scores([(truth, class_map(truth, types), truth, class_map(truth, {**types, 2: 3}))], "abc", 12)
    assert as_maps == pytest.approx(typed_scores([(truth, types, truth, {**types, 2: 3})], "abc", 12), nan_ok=True)
    mixed = class_map(truth, types)
    mixed[8, 8] = 2  # the centre of nucleus 1 (class 1)
    with pytest.raises(ValueError, match="nucleus 1 holds several classes"):
        typed_scores([(truth, mixed, truth, types)], "abc", 12)
    with pytest.raises(ValueError, match="no class for nuclei \\[5\\]"):
        typed_scores([(truth, types, truth, {k: v for k, v in types.items() if k != 5})], "abc", 12)
    with pytest.raises(ValueError, match="nucleus 5 has class 3, expected 1..2"):
        typed_scores([(truth, types, truth, types)], "ab", 12)
    with pytest.raises(ValueError, match="distinct"):
        TypedMetrics(["Tumour", "tumour"], radius=12)
    with pytest.raises(ValueError, match="radius"):
        TypedMetrics(["a"], radius=0)
    metrics = TypedMetrics(["a", "b", "c"], radius=12)
    metrics.update(truth, types, truth, types, tissue="Breast")
    metrics.update(truth, types, truth, types)
    with pytest.raises(ValueError, match="tissue given for 1 of 2 images"):
        metrics.compute()


def test_class_keys():
    assert class_key("Non-Neoplastic Epithelial") == "non-neoplastic_epithelial"
    truth, types = five_nuclei()
    counts = typed_image_counts(truth, types, truth, types, n_classes=3, radius=12)
    assert counts.n_true.tolist() == [2, 2, 1] and counts.fp.tolist() == counts.fn.tolist() == [0, 0, 0]


# ------------------------------------------------------------------------------------------------------------------
# Against the references, on random synthetic datasets
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conic_mpq_plus_matches_its_reference(seed):
    dataset = [*random_dataset(seed, 6), (EMPTY, {}, EMPTY, {}), ONLY_PREDICTED]
    true, pred = conic_arrays(dataset)
    reference, per_image, totals = quiet(conic_compute_stats_multi_pq, true, pred)
    metrics = TypedMetrics(CONIC_CLASSES, radius=12)
    for index, pair in enumerate(dataset):
        counts = metrics.update(*pair)
        ours = np.stack([counts.tp, counts.fp, counts.fn], axis=1)
        assert np.array_equal(ours, per_image[index][:, :3]) and np.allclose(counts.sum_iou, per_image[index][:, 3])
    scores = metrics.compute()
    assert scores["mpq_plus"] == pytest.approx(reference, **REFERENCE_EPSILON)
    # their pooled counts divided without the 1e-6 guards give our per-class values exactly
    tp, fp, fn, sum_iou = totals.T
    dq = np.divide(tp, tp + 0.5 * fp + 0.5 * fn, out=np.zeros(6), where=tp + fp + fn > 0)
    sq = np.divide(sum_iou, tp, out=np.zeros(6), where=tp > 0)
    assert [scores[f"pq_{c}"] for c in CONIC_CLASSES] == pytest.approx(dq * sq, abs=1e-12)
    assert [scores[f"dq_{c}"] for c in CONIC_CLASSES] == pytest.approx(dq, abs=1e-12)
    assert [scores[f"sq_{c}"] for c in CONIC_CLASSES] == pytest.approx(sq, abs=1e-12)
    assert 0 < scores["mpq_plus"] < 1


@pytest.mark.parametrize("seed", [3, 4])
def test_conic_multi_r2_matches_its_reference(seed):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    dataset = random_dataset(seed, 6)
    true, pred = conic_arrays(dataset)

    def counts(array):  # nuclei of each class per image, from the class-restricted instance maps
        rows = [[len(np.unique(a[..., 0] * (a[..., 1] == j + 1))) - 1 for j in range(6)] for a in array]
        return pd.DataFrame(rows, columns=CONIC_CLASSES)

    reference = quiet(conic_get_multi_r2, counts(true), counts(pred))
    ours = typed_scores(dataset, CONIC_CLASSES, radius=12)
    assert ours["multi_r2"] == pytest.approx(reference, abs=1e-12)
    assert [ours[f"n_true_{c}"] for c in CONIC_CLASSES] == counts(true).sum().tolist()


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_pannuke_mpq_and_bpq_match_their_reference(seed):
    dataset = [*random_dataset(seed, 5, n_images=10), (EMPTY, {}, EMPTY, {}), ONLY_PREDICTED]
    tissues = list(np.random.default_rng(seed).choice(["Breast", "Colon", "Liver"], len(dataset)))
    true = np.stack([pannuke_array(t, tt) for t, tt, _, _ in dataset])
    pred = np.stack([pannuke_array(p, pt) for _, _, p, pt in dataset])
    keys = [class_key(name) for name in PANNUKE_CLASSES]
    for names in (tissues, None):
        class_pq, mpq, bpq = quiet(pannuke_run_main, true, pred, names or ["Breast"] * len(dataset))
        ours = typed_scores(dataset, PANNUKE_CLASSES, radius=12, tissues=names)
        assert ours["pannuke_mpq"] == pytest.approx(mpq, **REFERENCE_EPSILON) and 0 < mpq < 1
        assert ours["pannuke_bpq"] == pytest.approx(bpq, **REFERENCE_EPSILON)
        assert [ours[f"pannuke_pq_{k}"] for k in keys] == pytest.approx(class_pq, **REFERENCE_EPSILON)


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_hover_net_type_stats_match_their_reference(seed):
    # images with nuclei on both sides: the reference puts a stand-in nucleus in empty ones (see the test above)
    dataset = [pair for pair in random_dataset(seed, 6, n_images=10) if pair[0].any() and pair[2].any()]
    points = [(*hover_net_points(t, tt), *hover_net_points(p, pt)) for t, tt, p, pt in dataset]
    f_d, accuracy, *f_c = quiet(hover_net_run_nuclei_type_stat, points, type_uid_list=list(range(1, 7)), radius=12)
    ours = typed_scores(dataset, CONIC_CLASSES, radius=12)
    assert ours["f_d"] == pytest.approx(f_d, abs=1e-12) and 0 < f_d < 1
    assert ours["type_accuracy"] == pytest.approx(accuracy, abs=1e-12) and 0 < accuracy < 1
    assert [ours[f"f_c_{c}"] for c in CONIC_CLASSES] == pytest.approx(f_c, abs=1e-12, nan_ok=True)
