//! Every chart kind renders to a well-formed SVG and a PNG of the stated size, with its text
//! (the embedded font lays it out on any machine), and bad input is an error, not a blank file.

use guardreasoner_plot::{BarChart, Bars, Chart, Line, LineChart, PlotError};

fn loss_chart() -> Chart {
    LineChart {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        x_range: None,
        y_range: None,
        lines: vec![Line {
            name: "loss".into(),
            points: (1..=50)
                .map(|s| (s as f64, 2.0 / (s as f64).sqrt()))
                .collect(),
            markers: false,
        }],
        diagonal: false,
    }
    .into()
}

fn reliability_chart() -> Chart {
    LineChart {
        title: "reliability".into(),
        x_label: "mean score".into(),
        y_label: "fraction positive".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        lines: vec![
            Line {
                name: "ToxicChat request".into(),
                points: vec![(0.05, 0.1), (0.5, 0.3), (0.95, 0.6)],
                markers: true,
            },
            Line {
                name: "with a NaN".into(),
                points: vec![(0.1, f64::NAN), (0.9, 0.8)],
                markers: true,
            },
        ],
        diagonal: true,
    }
    .into()
}

fn f1_chart() -> Chart {
    BarChart {
        title: "F1 per benchmark".into(),
        value_label: "F1 (%)".into(),
        groups: vec![
            "ToxicChat".into(),
            "XSTestResponseHarmful".into(),
            "R&D <x>".into(),
        ],
        series: vec![
            Bars {
                name: "ours".into(),
                values: vec![Some(61.8), None, None],
            },
            Bars {
                name: "GuardReasoner 8B".into(),
                values: vec![Some(78.8), Some(99.0), None],
            },
        ],
        max: 100.0,
    }
    .into()
}

#[test]
fn every_kind_renders_svg_and_png_with_its_text() {
    for chart in [loss_chart(), reliability_chart(), f1_chart()] {
        let svg = chart.svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(chart.title()), "the title is drawn");
        let png = chart.png().unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h) = chart.size();
        // IHDR: width and height, big-endian, right after the signature and chunk header.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), w);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), h);
    }
    let svg = f1_chart().svg().unwrap();
    assert!(
        svg.contains("R&amp;D &lt;x&gt;") && !svg.contains("R&D <x>"),
        "text is escaped"
    );
    for text in [
        "ToxicChat",
        "XSTestResponseHarmful",
        "GuardReasoner 8B",
        "ours",
    ] {
        assert!(svg.contains(text), "{text} is drawn");
    }
    // One bar of ours (its other value is missing) and two of the second series, each series
    // with its legend swatch, in the palette's first two colours.
    let filled = |hex: &str| svg.matches(&format!("fill=\"{hex}\"")).count();
    assert_eq!(
        (filled("#D62728"), filled("#9ECAE1")),
        (1 + 1, 2 + 1),
        "{svg}"
    );
}

#[test]
fn write_puts_both_files_beside_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let files = loss_chart().write(&dir.path().join("loss_curve")).unwrap();
    assert_eq!(
        files,
        vec![
            dir.path().join("loss_curve.svg"),
            dir.path().join("loss_curve.png")
        ]
    );
    assert!(files
        .iter()
        .all(|f| std::fs::metadata(f).unwrap().len() > 1000));
}

#[test]
fn nothing_to_draw_is_an_error() {
    let mut empty = match loss_chart() {
        Chart::Line(c) => c,
        _ => unreachable!(),
    };
    empty.lines[0].points = vec![(f64::NAN, 1.0)];
    let err = Chart::from(empty).svg().unwrap_err();
    assert!(matches!(err, PlotError::Empty { .. }), "{err}");
    let no_bars = BarChart {
        title: "t".into(),
        value_label: "v".into(),
        groups: vec![],
        series: vec![],
        max: 1.0,
    };
    assert!(Chart::from(no_bars).png().is_err());
}

/// Writes the test charts to `$GUARDREASONER_PLOT_SAMPLES` for a look (not run otherwise).
#[test]
fn samples_for_a_look() {
    let Some(dir) = std::env::var_os("GUARDREASONER_PLOT_SAMPLES") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, chart) in [
        ("loss", loss_chart()),
        ("reliability", reliability_chart()),
        ("f1", f1_chart()),
    ] {
        chart.write(&dir.join(name)).unwrap();
    }
}

#[test]
fn axis_ticks_are_written_without_empty_decimals() {
    let svg = loss_chart().svg().unwrap();
    // Steps 1-50: whole-number ticks such as 10 and 20, never 10.0.
    assert!(svg.contains("\n10\n") && svg.contains("\n20\n"), "{svg}");
    assert!(!svg.contains(".0\n"), "{svg}");
}
