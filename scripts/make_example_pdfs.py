"""Regenerate the PDF articles of the example corpus (run once; the PDFs are committed)."""

from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF

ARTICLES = {
    "warranty.pdf": (
        "Warranty and guarantees",
        [
            "All Harbor & Hearth furniture comes with a 2-year warranty against manufacturing defects, "
            "counted from the day of delivery. Lighting and small electrical items are covered for 1 year.",
            "The warranty covers faulty joints, broken frames, failed mechanisms (for example recliner "
            "and sofa-bed mechanisms) and electrical faults. It does not cover normal wear and tear, "
            "damage from misuse, fading caused by direct sunlight, or items used commercially.",
            "To make a warranty claim, contact support with your order number, a description of the "
            "fault and photos. If we cannot repair the item we replace it or refund it in full.",
        ],
    ),
    "damaged-items.pdf": (
        "Damaged or faulty items",
        [
            "If an item arrives damaged, report it within 48 hours of delivery so we can claim from the "
            "courier. Use the 'Report a problem' button next to the order in Account > Orders, and add "
            "photos of the damage and of the outer packaging.",
            "Keep the item and the packaging until the claim is settled. We send a free replacement, "
            "or a full refund if the item is out of stock, usually within 5 business days of the report.",
            "For large furniture with visible damage, you can refuse the delivery: the driver takes it "
            "back and we arrange a new delivery day at no cost.",
        ],
    ),
}


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "examples" / "help-center"
    for filename, (title, paragraphs) in ARTICLES.items():
        pdf = FPDF()
        pdf.set_title(title)
        pdf.set_creation_date(datetime(2026, 1, 1, tzinfo=UTC))  # reproducible bytes
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.multi_cell(0, 10, title)
        pdf.set_font("Helvetica", size=11)
        for paragraph in paragraphs:
            pdf.ln(3)
            pdf.multi_cell(0, 6, paragraph)
        pdf.output(str(out / filename))


if __name__ == "__main__":
    main()
