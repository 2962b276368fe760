//! The TwiML a voice template becomes on Twilio: the `<Say>` voice and language of each locale from
//! Twilio's text-to-speech list, and the document's length, which a voice template's check bounds
//! (docs/templates.md). Here, below both, so that templates and the Twilio provider share one builder.

use crate::job::Locale;

/// Marker that `{{pause}}` leaves in rendered voice text; the voice provider turns it into a pause.
/// Control characters cannot come from a job (they are rejected there), so it cannot be forged.
pub const PAUSE: &str = "\u{1}pause\u{1}";

/// `<Response><Say voice="Polly.Mia" language="es-MX">…</Say><Pause length="1"/>…</Response>`, said twice
/// so that a listener who missed the start hears the code again.
pub fn twiml(text: &str, voice: &SayVoice) -> String {
    let say = format!("<Say voice=\"{}\" language=\"{}\">", voice.voice, voice.language);
    let mut says = String::new();
    for (i, piece) in text.split(PAUSE).enumerate() {
        if i > 0 {
            says.push_str("<Pause length=\"1\"/>");
        }
        let piece = piece.trim();
        if !piece.is_empty() {
            says.push_str(&say);
            says.push_str(&xml_escape(piece));
            says.push_str("</Say>");
        }
    }
    format!("<Response>{says}<Pause length=\"1\"/>{says}</Response>")
}

/// The TwiML a call speaking `text` in `language` sends: its voice, else (a language Twilio has no voice
/// for) `default_locale`'s, else en-US's.
pub fn twiml_in(text: &str, language: &Locale, default_locale: &Locale) -> String {
    let voice = say_voice(language)
        .or_else(|| say_voice(default_locale))
        .unwrap_or(&SAY_VOICES[0]);
    twiml(text, voice)
}

/// At least the length of the TwiML sent for `text` in `language` whatever the default locale: exact when
/// Twilio has a voice for `language`, else measured with the longest voice name.
pub fn twiml_length_bound(text: &str, language: &Locale) -> usize {
    let voice = say_voice(language).unwrap_or_else(|| {
        SAY_VOICES
            .iter()
            .max_by_key(|v| v.voice.len() + v.language.len())
            .unwrap_or(&SAY_VOICES[0])
    });
    twiml(text, voice).chars().count()
}

/// A `<Say>` `language` of Twilio's text-to-speech list and the voice herald speaks it with
/// (https://www.twilio.com/docs/voice/twiml/say/text-speech#available-voices-and-languages).
#[derive(Debug, PartialEq, Eq)]
pub struct SayVoice {
    pub language: &'static str,
    pub voice: &'static str,
}

const fn say(language: &'static str, voice: &'static str) -> SayVoice {
    SayVoice { language, voice }
}

/// One voice per language of Twilio's list that has a standard voice (the `language` values and voice names
/// as Twilio's SDKs generate them from its TwiML definition, e.g. twilio-node's `SayLanguage` and
/// `SayVoice`). Amazon Polly's standard voice where Polly has one for the language
/// (https://docs.aws.amazon.com/polly/latest/dg/standard-voices.html), the first female one, as Twilio's
/// old default `alice` was; else Google's first standard voice (`…-Standard-A`). Standard voices are billed
/// at Twilio's basic text-to-speech price, neural and generative ones at a premium, so the languages Twilio
/// speaks only with those (en-CA, en-IE, en-NZ, en-ZA, de-AT, fr-BE, ar-AE) take their language's default
/// region instead. Twilio's legacy `zh-CN`, `zh-HK`, `zh-TW` (the `alice` voice's) are reached through
/// cmn-CN, yue-HK and cmn-TW. The first entry of a language is its default region: en-US, es-MX (Latin
/// American Spanish, as herald has sent since its first release), fr-FR, nl-NL, pt-BR.
pub const SAY_VOICES: &[SayVoice] = &[
    say("en-US", "Polly.Joanna"),
    say("en-GB", "Polly.Amy"),
    say("en-AU", "Polly.Nicole"),
    say("en-IN", "Polly.Aditi"),
    say("en-GB-WLS", "Polly.Geraint"),
    say("af-ZA", "Google.af-ZA-Standard-A"),
    say("am-ET", "Google.am-ET-Standard-A"),
    say("arb", "Polly.Zeina"),
    say("ar-XA", "Google.ar-XA-Standard-A"),
    say("bg-BG", "Google.bg-BG-Standard-A"),
    say("bn-IN", "Google.bn-IN-Standard-A"),
    say("ca-ES", "Google.ca-ES-Standard-A"),
    say("cmn-CN", "Polly.Zhiyu"),
    say("cmn-TW", "Google.cmn-TW-Standard-A"),
    say("cs-CZ", "Google.cs-CZ-Standard-A"),
    say("cy-GB", "Polly.Gwyneth"),
    say("da-DK", "Polly.Naja"),
    say("de-DE", "Polly.Marlene"),
    say("el-GR", "Google.el-GR-Standard-A"),
    say("es-MX", "Polly.Mia"),
    say("es-ES", "Polly.Conchita"),
    say("es-US", "Polly.Lupe"),
    say("fi-FI", "Google.fi-FI-Standard-A"),
    say("fil-PH", "Google.fil-PH-Standard-A"),
    say("fr-FR", "Polly.Celine"),
    say("fr-CA", "Polly.Chantal"),
    say("gu-IN", "Google.gu-IN-Standard-A"),
    say("he-IL", "Google.he-IL-Standard-A"),
    say("hi-IN", "Polly.Aditi"),
    say("hu-HU", "Google.hu-HU-Standard-A"),
    say("id-ID", "Google.id-ID-Standard-A"),
    say("is-IS", "Polly.Dora"),
    say("it-IT", "Polly.Carla"),
    say("ja-JP", "Polly.Mizuki"),
    say("kn-IN", "Google.kn-IN-Standard-A"),
    say("ko-KR", "Polly.Seoyeon"),
    say("lv-LV", "Google.lv-LV-Standard-A"),
    say("ml-IN", "Google.ml-IN-Standard-A"),
    say("mr-IN", "Google.mr-IN-Standard-A"),
    say("ms-MY", "Google.ms-MY-Standard-A"),
    say("nb-NO", "Polly.Liv"),
    say("nl-NL", "Polly.Lotte"),
    say("nl-BE", "Google.nl-BE-Standard-A"),
    say("pa-IN", "Google.pa-IN-Standard-A"),
    say("pl-PL", "Polly.Ewa"),
    say("pt-BR", "Polly.Camila"),
    say("pt-PT", "Polly.Ines"),
    say("ro-RO", "Polly.Carmen"),
    say("ru-RU", "Polly.Tatyana"),
    say("sk-SK", "Google.sk-SK-Standard-A"),
    say("sr-RS", "Google.sr-RS-Standard-A"),
    say("sv-SE", "Polly.Astrid"),
    say("ta-IN", "Google.ta-IN-Standard-A"),
    say("te-IN", "Google.te-IN-Standard-A"),
    say("th-TH", "Google.th-TH-Standard-A"),
    say("tr-TR", "Polly.Filiz"),
    say("uk-UA", "Google.uk-UA-Standard-A"),
    say("vi-VN", "Google.vi-VN-Standard-A"),
    say("yue-HK", "Google.yue-HK-Standard-A"),
];

/// BCP 47 tags whose Twilio language is spelt otherwise: Chinese by script or region (Twilio names
/// Mandarin `cmn`, Cantonese `yue`), Norwegian, Arabic (`arb`, Modern Standard Arabic), Welsh English.
const ALIASES: &[(&str, &str)] = &[
    ("zh", "cmn-CN"),
    ("zh-CN", "cmn-CN"),
    ("zh-Hans", "cmn-CN"),
    ("zh-SG", "cmn-CN"),
    ("zh-Hant", "cmn-TW"),
    ("zh-TW", "cmn-TW"),
    ("zh-HK", "yue-HK"),
    ("zh-MO", "yue-HK"),
    ("zh-Hant-HK", "yue-HK"),
    ("yue", "yue-HK"),
    ("cmn", "cmn-CN"),
    ("no", "nb-NO"),
    ("nb", "nb-NO"),
    ("nn", "nb-NO"),
    ("ar", "arb"),
    ("cy", "cy-GB"),
];

/// The voice for `locale` as templates fall back (docs/templates.md): the exact language and region, else each shorter
/// tag (`zh-Hant-TW` → `zh-Hant` → `zh`) by its alias or its language's default region. `None` when Twilio
/// lists no voice for the language: the caller speaks `templates.default_locale`'s instead.
pub fn say_voice(locale: &Locale) -> Option<&'static SayVoice> {
    let by_language = |language: &str| SAY_VOICES.iter().find(|v| v.language.eq_ignore_ascii_case(language));
    locale.fallbacks().find_map(|tag| {
        if let Some(exact) = by_language(tag) {
            return Some(exact);
        }
        if let Some((_, language)) = ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(tag)) {
            return by_language(language);
        }
        // A bare language: its default region, the first entry whose language part it is.
        (!tag.contains('-'))
            .then(|| {
                SAY_VOICES.iter().find(|v| {
                    v.language
                        .split('-')
                        .next()
                        .is_some_and(|l| l.eq_ignore_ascii_case(tag))
                })
            })
            .flatten()
    })
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}
