"""The Gradio Space of a published repo (`mm publish --space_dir`, `mm space`): which tabs each architecture gets, the
files and front matter the writer produces, the app's occlusion heatmaps against `mm explain`'s, its readable
messages for bad input, and the app itself served by `python app.py` in a process that cannot import this package,
driven in headless Chromium (upload an easy-VQA image, ask, read the answer, draw the heatmap, see the errors).

The browser test needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium chromium-driver`) and
the `space` and `test` extras (gradio, selenium); without them it skips and says which is missing.
`MM_SPACE_SCREENSHOT=docs/images/space.png pytest tests/test_space.py` also saves the page's screenshot there.
"""

import ast
import contextlib
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import PIL.Image
import pytest
import torch
from huggingface_hub import SpaceCard

from mm_tester import MMModelTester
from modeling_mm import MMConfig, MMForVisualQuestionAnswering, MMModel
from processing import build_default_processor
from processing.data import easy_vqa_answers, easy_vqa_data_dir
from publishing import space
from publishing.hub import PublishArguments, supported_tasks
from run_scripts import publish
from run_scripts.space import SpaceArguments


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = "what color is the shape?"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
START_TIMEOUT_S, STEP_TIMEOUT_S = 240.0, 60.0


# ----------------------------------------------------------------------------------------------------------------------
# Which tabs exist
# ----------------------------------------------------------------------------------------------------------------------

ITM, DECODER = {"itm_head.weight"}, {"text_decoder.lm_head.weight"}


@pytest.mark.parametrize(
    "architecture, fusion, weights, builtin, expected",
    [
        ("MMForVisualQuestionAnswering", "hybrid", set(), True, ["vqa", "heatmap"]),
        ("MMForVisualQuestionAnswering", "late", set(), True, ["vqa", "heatmap"]),
        ("MMForVisualQuestionAnswering", "early", set(), True, ["vqa"]),  # no patch dropping through joint layers
        ("MMForVisualQuestionAnswering", "late", set(), False, ["vqa"]),  # a foreign tower cannot drop patches
        ("MMForConditionalGeneration", "hybrid", set(), True, ["caption"]),  # nothing for a heatmap to explain
        ("MMForPreTraining", "hybrid", ITM | DECODER, True, ["zero_shot", "caption", "search", "heatmap"]),
        ("MMForPreTraining", "hybrid", set(), True, ["zero_shot", "heatmap"]),  # hybrid search needs the ITM head
        ("MMModel", "late", set(), True, ["zero_shot", "search", "heatmap"]),
        ("MMForImageTextRetrieval", "late", set(), False, ["zero_shot", "search"]),
        ("MMModel", "early", set(), True, []),
        ("MMForImageTextClassification", "late", set(), True, []),
    ],
)
def test_tabs_follow_the_published_tasks(architecture, fusion, weights, builtin, expected):
    assert space.space_tabs(supported_tasks(architecture, fusion, weights), fusion, builtin) == expected


# ----------------------------------------------------------------------------------------------------------------------
# The writer
# ----------------------------------------------------------------------------------------------------------------------


def _gallery(count: int = 4) -> list[str]:
    return [os.path.join(easy_vqa_data_dir(), "test", "images", f"{i}.png") for i in range(count)]


@pytest.mark.parametrize("hub_id", [True, False])
def test_write_space_files_and_front_matter(tmp_path, hub_id):
    model_id = "me/mm-vqa" if hub_id else str(tmp_path / "published")
    os.makedirs(tmp_path / "published")
    out = tmp_path / "space"
    files = space.write_space(str(out), model_id, ["vqa", "heatmap"], "mm-vqa", revision="abc123", gallery=_gallery())
    assert files == ["README.md", "app.py", "gallery/00.png", "gallery/01.png", "gallery/02.png", "gallery/03.png",
                     "requirements.txt"]
    card = SpaceCard.load(str(out / "README.md"))
    data = card.data.to_dict()
    assert (data["sdk"], data["app_file"], data["sdk_version"]) == ("gradio", "app.py", space.GRADIO_VERSION)
    assert data["title"] == "mm-vqa" and data["license"] == "apache-2.0" and len(data["short_description"]) <= 60
    assert data.get("models") == (["me/mm-vqa"] if hub_id else None)  # a local folder is no Hub model
    assert "python app.py" in card.text and space.TAB_DESCRIPTIONS["heatmap"] in card.text

    app = (out / "app.py").read_text()
    compile(app, "app.py", "exec")
    namespace = {}
    for line in app.splitlines():
        name = line.split(":")[0]
        if name in ("MODEL_ID", "REVISION", "TABS", "TITLE"):
            namespace[name] = ast.literal_eval(line.split(" = ", 1)[1])
    assert namespace["MODEL_ID"] == (model_id if hub_id else os.path.abspath(model_id))
    assert (namespace["REVISION"], namespace["TABS"], namespace["TITLE"]) == ("abc123", ["vqa", "heatmap"], "mm-vqa")
    assert "import modeling_mm" not in app and "from evaluation" not in app and "publishing" not in app.split('"""')[2]

    requirements = (out / "requirements.txt").read_text()
    assert "transformers>=5.24" in requirements and "torch" in requirements
    assert not [line for line in requirements.splitlines() if line.startswith("gradio")]  # the Space's sdk_version

    with pytest.raises(SystemExit, match="not empty"):
        space.write_space(str(out), model_id, ["vqa"], "mm-vqa", gallery=[])
    assert space.write_space(str(out), model_id, ["vqa"], "mm-vqa", gallery=[], overwrite=True) == [
        "README.md", "app.py", "requirements.txt"]
    with pytest.raises(SystemExit, match="serves no task"):
        space.write_space(str(tmp_path / "none"), model_id, [], "mm")


def test_publish_arguments_check_the_space_dir(tmp_path):
    with pytest.raises(ValueError, match="outside --output_dir"):
        PublishArguments(output_dir=str(tmp_path / "hub"), checkpoint="c", space_dir=str(tmp_path / "hub" / "space"))
    with pytest.raises(ValueError, match="--merge_adapter"):
        PublishArguments(output_dir=str(tmp_path / "hub"), adapter_path="a", space_dir=str(tmp_path / "space"))
    with pytest.raises(ValueError, match="no config.json"):
        SpaceArguments(model=str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------------
# A tiny VQA model over the easy-VQA answers, published with its Space
# ----------------------------------------------------------------------------------------------------------------------


def _vqa_config(fusion: str, answers: list[str]) -> MMConfig:
    # Tiny, with the real MiniLM vocabulary the published tokenizer needs; 32px images, 8px patches: a 4x4 grid as in
    # the default 64px / 16px model.
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37)
    text = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MMConfig(fusion=fusion, vision_config=vision, text_config=text, projection_dim=16, num_fusion_layers=1,
                    num_labels=len(answers), id2label=dict(enumerate(answers)),
                    label2id={a: i for i, a in enumerate(answers)})


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("space")
    answers = easy_vqa_answers()
    processor = build_default_processor(image_size=32)
    # Untrained: the page only has to show answers from its vocabulary.
    model = MMForVisualQuestionAnswering(_vqa_config("hybrid", answers)).eval()
    ckpt = str(root / "ckpt")
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    folder, space_dir = str(root / "mm-vqa"), str(root / "mm-vqa-space")
    with contextlib.redirect_stdout(io.StringIO()):
        result = publish.main(["--checkpoint", ckpt, "--output_dir", folder, "--space_dir", space_dir])
    return {"root": root, "folder": folder, "space_dir": space_dir, "result": result, "answers": answers}


def test_publish_writes_the_space_next_to_the_repo(published, app_process):
    # `app_process` starts the Space's app now, for the browser test at the end of this file.
    files = sorted(os.listdir(published["space_dir"]))
    assert files == ["README.md", "app.py", "gallery", "requirements.txt"]
    assert len(os.listdir(os.path.join(published["space_dir"], "gallery"))) == space.GALLERY_SIZE
    assert not any(name.startswith(("app.py", "gallery")) for name, _ in published["result"]["files"])  # not uploaded
    assert space.folder_tabs(published["folder"]) == ["vqa", "heatmap"]
    with open(os.path.join(published["space_dir"], "app.py"), encoding="utf-8") as f:
        app = f.read()
    assert f"MODEL_ID: str | None = {os.path.abspath(published['folder'])!r}" in app
    assert "TABS: list[str] = ['vqa', 'heatmap']" in app


def test_mm_space_serves_a_published_folder(app, published, monkeypatch):
    from run_scripts import space as space_cli

    calls = []
    monkeypatch.setattr(app, "launch", lambda *args, **kwargs: calls.append((args, kwargs)))
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        space_cli.main(["--model", published["folder"], "--port", "7999"])
    (model_id, tabs), kwargs = calls[0]
    assert (model_id, tabs) == (os.path.abspath(published["folder"]), ["vqa", "heatmap"])
    assert (kwargs["host"], kwargs["port"], kwargs["title"]) == ("127.0.0.1", 7999, "mm-vqa")
    assert len(kwargs["gallery"]) == space.GALLERY_SIZE and "http://127.0.0.1:7999" in stdout.getvalue()
    with pytest.raises(ValueError, match="--port"):
        SpaceArguments(model=published["folder"], port=0)


# ----------------------------------------------------------------------------------------------------------------------
# The app's code, in this process
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app():
    pytest.importorskip("gradio", reason="the app needs Gradio: pip install 'mm-pretrain[space]'")
    from publishing import space_app

    return space_app


def test_space_tab_names_match_the_app(app):
    assert not os.path.exists(os.path.splitext(app.__file__)[0] + ".pyi")  # Gradio stubs a component class's file
    assert list(app.TAB_TITLES) == list(space.TAB_DESCRIPTIONS)
    assert set(space.TASK_TABS.values()) | {"heatmap"} == set(app.TAB_TITLES)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_itc_occlusion_equals_mm_explain(app, fusion):
    from evaluation.explain import compute_relevance

    tester = MMModelTester(batch_size=1, image_size=16, patch_size=4)
    torch.manual_seed(0)
    model = MMModel(tester.get_config(fusion)).eval()
    inputs = tester.get_inputs(padded=False)
    falls, cosine = app.itc_occlusion(model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    expected = compute_relevance(model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                 inputs["attention_mask"].bool(), method="occlusion")
    assert falls.shape == (4, 4)
    torch.testing.assert_close(falls, expected.patch_maps[0, 0], atol=1e-5, rtol=0)
    assert abs(cosine - float(expected.scores[0])) < 1e-5


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_vqa_occlusion_reads_the_model_s_own_logits(app, fusion):
    tester = MMModelTester(batch_size=1, image_size=16, patch_size=4)
    torch.manual_seed(0)
    model = MMForVisualQuestionAnswering(tester.get_config(fusion, num_labels=5)).eval()
    inputs = tester.get_inputs(padded=False)
    with torch.no_grad():
        logits = model(**inputs).logits
        every_patch = torch.arange(16)[None]
        torch.testing.assert_close(app.vqa_logits(model, **inputs), logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(app.vqa_logits(model, **inputs, image_keep_indices=every_patch), logits,
                                   atol=1e-5, rtol=0)
        falls, probability, answer = app.vqa_occlusion(model, inputs["pixel_values"], inputs["input_ids"],
                                                       inputs["attention_mask"])
        # Patch 5 dropped, by hand: the fall of the answer's probability.
        keep = torch.tensor([[i for i in range(16) if i != 5]])
        dropped = app.vqa_logits(model, **inputs, image_keep_indices=keep).softmax(-1)[0, answer]
    assert answer == int(logits.argmax()) and abs(probability - float(logits.softmax(-1)[0, answer])) < 1e-6
    assert falls.shape == (4, 4) and abs(float(falls[1, 1]) - (probability - float(dropped))) < 1e-5
    picture = app.overlay(PIL.Image.new("RGB", (64, 48), "white"), falls.numpy())
    assert picture.size == (app.HEATMAP_SIZE, app.HEATMAP_SIZE) and picture.mode == "RGB"


def test_handlers_answer_bad_input_with_messages(app, published, tmp_path, monkeypatch):
    import gradio as gr

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    mm_space = app.MMSpace(published["folder"], ["vqa", "heatmap"])
    image = os.path.join(published["space_dir"], "gallery", "00.png")
    answers = mm_space.answer(image, QUESTION, 3)
    assert len(answers) == 3 and set(answers) <= set(published["answers"])
    heatmap, legend = mm_space.explain(image, QUESTION)
    assert heatmap.size == (app.HEATMAP_SIZE, app.HEATMAP_SIZE) and "probability of the answer" in legend

    text_file = tmp_path / "shape.png"  # named like an image, but is not one
    text_file.write_text("not an image")
    huge = tmp_path / "huge.png"
    PIL.Image.new("RGB", (5000, 4000), "white").save(huge)
    cases = [
        ((None, QUESTION), "Upload an image first"),
        ((image, "   "), "Type a question"),
        ((image, "x" * 600), "keep it under"),
        ((str(text_file), QUESTION), "not an image"),
        ((str(huge), QUESTION), "5000x4000 pixels"),
    ]
    for inputs, message in cases:
        with pytest.raises(gr.Error, match=message):
            mm_space.answer(*inputs)
    with pytest.raises(gr.Error, match="not an image"):
        app.image_upload(type="filepath").preprocess(gr.FileData(path=str(text_file), orig_name="shape.png"))
    with pytest.raises(ValueError, match="tabs"):
        app.MMSpace(published["folder"], ["dance"])


def test_every_tab_of_a_pretrained_hybrid_model(app, tmp_path, monkeypatch):
    import gradio as gr

    from modeling_mm import MMForPreTraining

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    torch.manual_seed(0)
    config = _vqa_config("hybrid", ["yes", "no"])
    config.objectives = ["itc", "itm", "lm"]
    config.num_decoder_layers = 1
    ckpt, folder = str(tmp_path / "ckpt"), str(tmp_path / "mm-hybrid")
    MMForPreTraining(config).save_pretrained(ckpt)
    build_default_processor(image_size=32).save_pretrained(ckpt)
    with contextlib.redirect_stdout(io.StringIO()):
        publish.main(["--checkpoint", ckpt, "--output_dir", folder, "--max_new_tokens", "4"])
    tabs = space.folder_tabs(folder)
    assert tabs == ["zero_shot", "caption", "search", "heatmap"]
    gallery = _gallery()
    mm_space = app.MMSpace(folder, tabs, gallery=gallery)
    image = gallery[0]

    scores = mm_space.classify(image, " red circle, blue triangle ,, green rectangle", "a {}")
    assert set(scores) == {"red circle", "blue triangle", "green rectangle"} and abs(sum(scores.values()) - 1) < 1e-4
    assert isinstance(mm_space.caption(image, ""), str) and isinstance(mm_space.caption(image, "a red"), str)
    found = mm_space.search("a red circle", 3)
    assert len(found) == 3 and {path for path, _ in found} <= set(gallery)
    assert all(label.startswith("score ") for _, label in found)
    heatmap, legend = mm_space.explain(image, "a red circle")
    assert heatmap.size == (app.HEATMAP_SIZE, app.HEATMAP_SIZE) and "similarity of the image with" in legend
    for call, message in [
        (lambda: mm_space.classify(image, " , ", "a {}"), "at least one label"),
        (lambda: mm_space.classify(image, "red", "a photo"), "must contain {}"),
        (lambda: mm_space.classify(None, "red", "a {}"), "Upload an image first"),
        (lambda: mm_space.search("  ", 3), "Type what to look for"),
        (lambda: mm_space.explain(image, ""), "Type a text to find"),
        (lambda: mm_space.caption(image, "x" * 600), "keep it under"),
    ]:
        with pytest.raises(gr.Error, match=message):
            call()
    assert isinstance(app.build_demo(mm_space, title="mm-hybrid"), gr.Blocks)


# ----------------------------------------------------------------------------------------------------------------------
# The app in a browser
# ----------------------------------------------------------------------------------------------------------------------

# `python app.py`, but where this repository cannot be imported (an editable install's finder dropped too).
RUN_APP = (
    "import runpy, sys; "
    f"sys.path = [p for p in sys.path if p not in ('', {REPO_ROOT!r})]; "
    "sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, '__module__', '')).startswith('__editable__')]; "
    "runpy.run_path('app.py', run_name='__main__')"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_page(url: str, process: subprocess.Popen, timeout: float) -> float:
    """Seconds until `url` answers 200; fails if the process dies or `timeout` passes (polls every 0.25 s)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f"the app did not answer within {timeout:.0f} s")


@pytest.fixture(scope="module")
def app_process(published):
    """`python app.py` in the Space folder, started (not awaited) as soon as the Space exists, so that its start-up
    overlaps the in-process tests; `None` without Gradio."""
    if importlib.util.find_spec("gradio") is None:
        yield None
        return
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_SERVER_PORT=str(port), HF_MODULES_CACHE=str(published["root"] / "modules"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    with open(published["root"] / "app.log", "w") as log:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-c", RUN_APP], cwd=published["space_dir"], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield {"process": process, "port": port, "started": started, "log": published["root"] / "app.log"}
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def served(app_process):
    if app_process is None:
        pytest.skip("the app needs Gradio: pip install 'mm-pretrain[space]'")
    url = f"http://127.0.0.1:{app_process['port']}/"
    _wait_for_page(url, app_process["process"], START_TIMEOUT_S)
    startup = time.monotonic() - app_process["started"]
    print(f"\nSpace app start-up (process start to the page answering): {startup:.1f} s")
    return {"url": url, "startup_s": startup, "log": app_process["log"]}


@pytest.fixture()
def browser():
    if not (os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER)):
        pytest.skip(f"no Chromium: {CHROMIUM} / {CHROMEDRIVER} are missing (Debian: apt-get install -y chromium "
                    "chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mm-space-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", "--window-size=1280,860"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(STEP_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_space_app_in_headless_chromium(published, served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, STEP_TIMEOUT_S, poll_frequency=0.25)

    def find(selector: str):
        return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector))

    def type_into(selector: str, text: str) -> None:
        box = find(f"{selector} textarea")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        if text:
            box.send_keys(text)

    def shown_image(d) -> str | None:
        images = d.find_elements(By.CSS_SELECTOR, "#image-input img")
        return images[0].get_attribute("src") if images else None

    def upload(path: str) -> None:
        before = shown_image(browser)
        browser.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(path)
        wait.until(lambda d: shown_image(d) not in (None, before))  # the upload has reached the server

    def error_shown(message: str) -> str:
        wait.until(lambda d: any(message in t.text for t in d.find_elements(By.CSS_SELECTOR, ".toast-body")))
        text = "\n".join(t.text for t in browser.find_elements(By.CSS_SELECTOR, ".toast-body"))
        assert "Traceback" not in text and 'File "' not in text
        for close in browser.find_elements(By.CSS_SELECTOR, ".toast-close"):
            with contextlib.suppress(Exception):
                close.click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".toast-body"))
        return text

    browser.get(served["url"])
    find("#vqa-question textarea")
    assert "Ask a question" in browser.page_source and "Heatmap" in browser.page_source
    assert "Zero-shot labels" not in browser.page_source  # a VQA checkpoint serves no ITC tabs

    # An empty question: a message, not an answer.
    image = os.path.join(easy_vqa_data_dir(), "test", "images", "0.png")
    upload(image)
    type_into("#vqa-question", "")
    find("#vqa-button").click()
    error_shown("Type a question about the image")

    # The answer shown is one of the model's labels.
    type_into("#vqa-question", QUESTION)
    find("#vqa-button").click()
    top = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#vqa-answers [data-testid=label-output-value]").text)
    assert top in published["answers"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#vqa-answers dt")
    assert len(rows) == 3 and all(row.text in published["answers"] for row in rows)
    screenshot = tmp_path / "space.png"
    browser.save_screenshot(str(screenshot))

    # The heatmap appears, with what it explains.
    tab = wait.until(lambda d: next(b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                    if b.text.strip() == "Heatmap"))
    tab.click()
    type_into("#heatmap-text", QUESTION)
    find("#heatmap-button").click()
    heatmap = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#heatmap-image img"))
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap))
    assert browser.execute_script("return arguments[0].naturalWidth", heatmap) > 0
    legend = find("#heatmap-legend").text
    assert "probability of the answer" in legend and any(answer in legend for answer in published["answers"])

    # A file named like an image that is not one, and an image too large: messages too.
    fake = tmp_path / "shape.png"
    fake.write_text("not an image")
    upload(str(fake))
    find("#heatmap-button").click()
    error_shown("not an image this app can read")
    huge = tmp_path / "huge.png"
    PIL.Image.new("RGB", (5000, 4000), "white").save(huge)
    upload(str(huge))
    find("#heatmap-button").click()
    error_shown("5000x4000 pixels")

    assert not os.path.exists(os.path.join(published["space_dir"], "app.pyi"))
    target = os.environ.get("MM_SPACE_SCREENSHOT")
    if target:
        shutil.copyfile(screenshot, target)
    with open(served["log"], encoding="utf-8") as f:
        assert "huggingface.co" not in f.read()  # offline: nothing fetched from the Hub
