"""LASEM family, unit level: configuration tables and routing, TF/DF-CNN layers, the prefix tree, the EM
updates, commit and rollback, TF1 RMSProp."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lifelong.engine.rmsprop_tf import RMSpropTF
from lifelong.errors import ConfigError
from lifelong.methods.base import TaskMeta
from lifelong.methods.lasem import LASEMHPS, LASEMTF, LasemConfig, mean_true_class_probability, posterior
from lifelong.methods.lasem_common import resolve_transfer, transfer_for_test_type
from lifelong.methods.selective import DFCNN, HPS, TF, DFCNNConfig, HPSConfig, TFConfig
from lifelong.nn.lasem_cnn import ARCHS, LasemCNN, LasemSpec, pool_same
from lifelong.nn.transfer import DFTask, TFFactors, TransferNet, config_of, config_str

pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")

CONFIGS_4 = ["TTTT", "FFFT", "FFTT", "FTTT", "TFFF", "TTFF", "TTTF", "FTFT", "TFTF", "FFFF"]


def small_spec(layers: int = 4, dropout: float = 0.5) -> LasemSpec:
    """A few channels on 8x8 inputs: the cifar4 layout, cut or extended to ``layers``."""
    k = (3,) * layers
    chans = tuple([4, 4, 6, 6, 8, 8][:layers])
    pools = tuple([1, 2, 1, 2, 1, 2][:layers])
    kb = tuple([(2, 3)] * layers)
    ts = tuple([(3, 4)] * layers)
    return LasemSpec("cifar4", 1, 8, k, chans, pools, (5,), kb, ts, dropout)


def make(cls, spec: LasemSpec, **cfg):
    config = cls.Config()
    for k, v in cfg.items():
        setattr(config, k, v)
    return cls(config, "task", lambda width=1.0: LasemCNN(spec))


# ------------------------------------------------------------------ configuration tables
def test_named_configurations_follow_the_codes_tables() -> None:
    four = [resolve_transfer(n, 4, "cifar4") for n in
            ("all", "top1", "top2", "top3", "bottom1", "bottom2", "bottom3", "alter", "alter_rev")]
    assert four == ["TTTT", "FFFT", "FFTT", "FTTT", "TFFF", "TTFF", "TTTF", "FTFT", "TFTF"]
    assert [transfer_for_test_type(tt, 4, "cifar4") for tt in (0, 10, 30, 44)] == ["TTTT", "FFTT", "TTTF", "TFTF"]
    six = [transfer_for_test_type(5 * b, 6, "cifar6") for b in range(12)]
    assert six == ["TTTTTT", "FFFFFT", "FFFFTT", "FFFTTT", "FFTTTT", "FTTTTT", "TFFFFF", "TTFFFF", "TTTFFF",
                   "TTTTFF", "TTTTTF", "FTFTFT"]
    office6 = [transfer_for_test_type(5 * b, 6, "officehome6") for b in range(9)]  # the first two layers never shared
    assert office6 == ["FFTTTT", "FFFFFT", "FFFFTT", "FFFTTT", "FFTFFF", "FFTTFF", "FFTTTF", "FFFTFT", "FFTFTF"]
    assert resolve_transfer("ttff", 4, "cifar4") == "TTFF"
    for bad in ("TTF", "top5", "middle"):
        with pytest.raises(ConfigError):
            resolve_transfer(bad, 4, "cifar4")
    with pytest.raises(ConfigError):
        transfer_for_test_type(45, 4, "cifar4")


def test_config_numbering_is_the_codes_possible_configs_order() -> None:
    assert [config_str(config_of(i, [1, 1])) for i in range(4)] == ["TT", "FT", "TF", "FF"]
    assert [config_str(config_of(i, [2, 2])) for i in range(4)] == ["TTTT", "FFTT", "TTFF", "FFFF"]


@pytest.mark.parametrize("cls,config", [(HPS, c) for c in CONFIGS_4] + [(TF, "FTFT"), (TF, "TTFF"), (DFCNN, "TFTF"), (DFCNN, "FFTT")])
def test_static_configuration_routes_exactly_its_layers_through_shared_parameters(cls, config: str) -> None:
    m = make(cls, small_spec(), transfer=config)
    for t in range(2):
        m.begin_task(TaskMeta(t, f"t{t}", 3))
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    for t in range(2):
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m.predict(x, t), y).backward()
        for l, layer in enumerate(m.net.layers):
            shared = config[l] == "T"
            assert (str(t) in layer.own) == (not shared)
            assert bool(len(layer.shared)) == shared  # unshared layers have no shared copy at all
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.shared_tensors())
            if not shared:
                assert layer.own[str(t)].weight.grad.abs().sum() > 0
                assert all(layer.own[str(o)].weight.grad is None for o in range(2) if o != t)
            if cls is not HPS:
                assert (str(t) in layer.ts) == shared
    assert m.configs == [config, config] and m.task_summary({"config": config}).startswith(f"config {config}")


# ------------------------------------------------------------------ TF and DF-CNN layers
def test_tf_weight_is_the_tucker_einsum_and_its_penalty_vanishes_for_orthogonal_factors() -> None:
    f = TFFactors(3, 3, 4, 5)
    core = torch.randn(3, 3, 4, 5)
    u0, u1, u2, u3 = f.u
    expected = torch.einsum("ijkl,ia,jb,kc,ld->abcd", core, u0, u1, u2, u3).permute(3, 2, 0, 1)
    assert torch.allclose(f.weight(core), expected, atol=1e-6)
    assert f.penalty() > 0
    with torch.no_grad():
        for u in f.u:
            u.copy_(torch.linalg.qr(torch.randn(u.shape[0], u.shape[0]))[0])
    assert f.penalty().item() == pytest.approx(0.0, abs=1e-5)


def test_tf_penalty_reaches_only_the_factors_gradients() -> None:
    m = make(TF, small_spec(), transfer="TTTT", aux_weight=0.1)
    m.begin_task(TaskMeta(0, "t0", 3))
    m.eval()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])

    def grads(with_aux: bool):
        m.zero_grad(set_to_none=True)
        out = m.net(x, 0, (True,) * 4)
        loss = F.cross_entropy(out, y)
        if with_aux:
            loss = loss + m.regulariser(m.net.penalties(0), torch.ones(4))
        loss.backward()
        layer = m.net.layers[1]
        return layer.shared["core"].grad.clone(), layer.ts["0"].u[2].grad.clone()

    core_plain, u_plain = grads(False)
    core_aux, u_aux = grads(True)
    assert torch.equal(core_plain, core_aux)  # the core sees the plain CE gradient
    assert not torch.allclose(u_plain, u_aux)


@pytest.mark.parametrize("variant", sorted(ARCHS))
def test_dfcnn_generates_kernels_of_the_asserted_size(variant: str) -> None:
    a = ARCHS[variant]
    ins = (3,) + a.channels
    for l, (k, (kb, c_kb), (kd, c_ts)) in enumerate(zip(a.kernels, a.kb, a.ts)):
        assert k == (kb - 1) * 2 + 1
        ci, co = min(ins[l], 8), min(a.channels[l], 8)  # channel counts do not change the kernel size
        w = DFTask(kb, c_kb, kd, c_ts, ci, co).weight(torch.randn(1, c_kb, kb, kb))
        assert w.shape == (co, ci, k, k)
    with pytest.raises(ConfigError, match="k = \\(kb-1\\)\\*2\\+1"):
        make(DFCNN, small_spec(), transfer="TTTT", kb_sizes=[[3, 3]] * 4)


def test_tf_same_pooling_pads_the_smaller_half_first() -> None:
    x = torch.arange(43.0).view(1, 1, 1, 43).expand(1, 1, 3, 43)
    out = pool_same(x, 3)  # 43 -> 15 windows; TF pads 1 left and 1 right
    assert out.shape[-1] == 15 and out[0, 0, 0, 0].item() == 1.0 and out[0, 0, 0, -1].item() == 42.0


# ------------------------------------------------------------------ the prefix tree
@pytest.mark.parametrize("kind", ["hps", "tf", "dfcnn"])
@pytest.mark.parametrize("groups", [None, [2, 2], [1, 3]])
def test_prefix_tree_equals_the_naive_evaluation_of_every_configuration(kind: str, groups) -> None:
    net = TransferNet(small_spec(), kind)
    for t in range(2):
        net.add_task(t, 3, [True] * 4, [kind != "hps"] * 4)
    net.eval()
    x = torch.randn(5, 1, 8, 8)
    tree, naive = net.tree(x, 1, groups), net.naive_tree(x, 1, groups)
    assert tree.shape == naive.shape == (2 ** len(groups or [1] * 4), 5, net.spec.flat_dim)
    assert torch.allclose(tree, naive, atol=1e-5)
    # different configurations give different features (the routing is real)
    assert not torch.allclose(tree[0], tree[-1])
    if groups is None:
        assert net.layer_evaluations() == 2 ** 5 - 2 < 4 * 2 ** 4


# ------------------------------------------------------------------ EM: posterior and prior
def test_posterior_and_likelihood_against_hand_computed_values() -> None:
    gamma = posterior(torch.full((4,), 0.25), torch.tensor([0.9, 0.5, 0.3, 0.1]))
    assert gamma.tolist() == pytest.approx([0.9 / 1.8, 0.5 / 1.8, 0.3 / 1.8, 0.1 / 1.8])
    # two configurations, two samples: true-class probabilities (0.9, 0.1) and (0.6, 0.4)
    logits = torch.log(torch.tensor([[[0.9, 0.1], [0.9, 0.1]], [[0.6, 0.4], [0.4, 0.6]]]))
    y = torch.tensor([0, 1])
    assert mean_true_class_probability(logits, y).tolist() == pytest.approx([0.5, 0.6])  # mean, not product


def test_em_step_on_a_two_layer_toy_matches_hand_computation() -> None:
    spec = small_spec(layers=2, dropout=0.0)
    m = make(LASEMHPS, spec)
    m.begin_task(TaskMeta(0, "t0", 3))
    m.reset_prior()
    m.train()
    torch.manual_seed(1)
    batches = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])) for _ in range(2)]
    prior = torch.full((4,), 0.25)
    seen = []
    for x, y in batches:
        with torch.no_grad():  # each of TT, FT, TF, FF on its own
            probs = [m.net(x, 0, config_of(i, [1, 1])).softmax(1)[torch.arange(4), y] for i in range(4)]
            lik = torch.stack([p.mean() for p in probs])
            ce = torch.stack([F.cross_entropy(m.net(x, 0, config_of(i, [1, 1])), y) for i in range(4)])
        expected = prior * lik / (prior * lik).sum()
        out, gamma = m.em_loss(x, y, 0)
        assert torch.allclose(gamma, expected, atol=1e-6)
        assert out.loss.item() == pytest.approx((expected * ce).sum().item(), rel=1e-5)
        seen.append(expected)
        prior = torch.stack(seen).mean(0)  # running mean of every posterior so far
        assert torch.allclose(m.prior, prior, atol=1e-6)
    # mass of layer l = posterior of the configurations sharing l: TT+TF for layer 0, TT+FT for layer 1
    g = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert m.layer_mass(g).tolist() == pytest.approx([0.6, 0.7])


# ------------------------------------------------------------------ commit and rollback
def _shared(m) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in layer.shared_tensors()] for layer in m.net.layers]


def _train_a_little(m) -> None:
    with torch.no_grad():
        for p in m.net.shared_parameters():
            p.add_(torch.randn_like(p) * 0.01)


def _pick(m, cfg: str) -> None:
    index = next(i for i in range(16) if config_str(config_of(i, [1] * 4)) == cfg)
    m.prior.zero_()
    m.prior[index] = 1.0


@pytest.mark.parametrize("cls", [LASEMHPS, LASEMTF])
def test_commit_rolls_back_unpicked_shared_layers_bit_for_bit_and_reinitialises_unborn_ones(cls) -> None:
    m = make(cls, small_spec())
    m.begin_task(TaskMeta(0, "t0", 3))
    m._snapshot = _shared(m)
    _train_a_little(m)
    _pick(m, "TFTF")
    assert m.commit(0) == (True, False, True, False)
    assert [bool(layer.born) for layer in m.net.layers] == [True, False, True, False]
    assert [("0" in layer.own) for layer in m.net.layers] == [False, True, False, True]
    trained = _shared(m)
    m.begin_task(TaskMeta(1, "t1", 3))  # unborn layers 1 and 3 start afresh, born ones are kept
    fresh = _shared(m)
    for l in range(4):
        same = all(torch.equal(a, b) for a, b in zip(trained[l], fresh[l]))
        assert same == (l in (0, 2))
    m._snapshot = _shared(m)
    before = _shared(m)
    _train_a_little(m)
    _pick(m, "FTTF")
    m.commit(1)
    after = _shared(m)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))  # born, not picked: rolled back exactly
    assert not any(torch.equal(a, b) for a, b in zip(before[2], after[2]))  # picked: the task's update stays
    assert [bool(layer.born) for layer in m.net.layers] == [True, True, True, False]
    assert m.configs == ["TFTF", "FTTF"]
    if cls is LASEMTF:
        assert [("1" in layer.ts) for layer in m.net.layers] == [False, True, True, False]


def test_plain_lasem_refuses_groups_and_lasemg_checks_them() -> None:
    from lifelong.methods.lasem import LASEMGHPS

    with pytest.raises(ConfigError, match="lasemg"):
        make(LASEMHPS, small_spec(), groups=[2, 2])
    with pytest.raises(ConfigError, match="summing"):
        make(LASEMGHPS, small_spec(), groups=[2, 1])
    g = make(LASEMGHPS, small_spec(), groups=[1, 3])
    assert g.prior.numel() == 4 and g.config_for(0) == (True,) * 4
    assert isinstance(LasemConfig(), LasemConfig)


# ------------------------------------------------------------------ TF1 RMSProp
def test_rmsprop_tf_two_steps_by_hand() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([p], lr=0.1)
    for g in ([0.5, 1.0], [-1.0, 0.0]):
        p.grad = torch.tensor(g)
        opt.step()
    # ms1 = 0.9*1 + 0.1*g1^2 = (0.925, 1.0); p1 = p0 - 0.1*g1/sqrt(ms1+1e-10)
    # ms2 = 0.9*ms1 + 0.1*g2^2 = (0.9325, 0.9); p2 = p1 - 0.1*g2/sqrt(ms2+1e-10)
    p1 = [1.0 - 0.1 * 0.5 / math.sqrt(0.925 + 1e-10), -2.0 - 0.1 * 1.0 / math.sqrt(1.0 + 1e-10)]
    p2 = [p1[0] + 0.1 * 1.0 / math.sqrt(0.9325 + 1e-10), p1[1]]
    assert p.tolist() == pytest.approx(p2, abs=1e-7)
    assert opt.state[p]["ms"].tolist() == pytest.approx([0.9325, 0.9])


def test_configs_are_typed_with_the_papers_defaults() -> None:
    for cfg in (HPSConfig(), TFConfig(), DFCNNConfig(), LasemConfig()):
        assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.weight_decay) == ("rmsprop_tf", 1e-4, 10, 2000, 0.0)
        assert cfg.lr_decay == pytest.approx(1 / 4000)
    assert TFConfig().aux_weight == 0.1 and DFCNNConfig().kb_reg == 1e-7 and HPSConfig().transfer == "top2"
